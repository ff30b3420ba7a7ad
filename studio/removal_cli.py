"""CLI subcommands of the layer-removal engine: ``blocks`` (block map) and ``prune`` (recipes / custom removals).

    python -m studio blocks --unet-config assets/configs/sdxl/unet/config.json --resolution 1024
    python -m studio prune --recipe ssd-1b --unet-config assets/configs/sdxl/unet/config.json --dry-run --json
    python -m studio prune --remove down_blocks.2.pairs.1,up_blocks.0.pairs.1 --teacher FOLDER --out DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from studio.blocks import block_map, count_params, format_table, meta_unet, total
from studio.recipes import RECIPES, recipe_plan
from studio.released import released_models, released_unet_config
from studio.removal import (RemovalPlan, build_student, export_student, name_map, parse_units, plan_kind,
                            runtime_modules, student_config)


def load_unet_config(path: str | Path) -> dict:
    """A UNet config from a ``config.json``, a diffusers UNet folder, a pipeline folder (its ``unet/``), or the name
    of a released config under ``assets/configs/`` (``sdxl``, ``sd-v1-4``, ...)."""
    if str(path) in released_models():
        return released_unet_config(str(path))
    p = Path(path)
    for candidate in (p, p / "config.json", p / "unet" / "config.json"):
        if candidate.is_file():
            cfg = json.loads(candidate.read_text())
            if cfg.get("_class_name", "UNet2DConditionModel") == "UNet2DConditionModel":
                return cfg
    raise ValueError(f"--unet-config {path}: no UNet2DConditionModel config.json there (give a config.json, a UNet "
                     f"folder, a pipeline folder with unet/, or one of {', '.join(released_models())})")


def _unet_folder(path: str | Path) -> tuple[str, str | None]:
    p = Path(path)
    if (p / "unet" / "config.json").is_file():
        return str(p), "unet"
    if (p / "config.json").is_file():
        return str(p), None
    raise ValueError(f"--teacher {path}: not a diffusers UNet or pipeline folder")


def _plan(args, config: dict) -> RemovalPlan:
    if args.recipe:
        return recipe_plan(args.recipe, config, keep=args.keep)
    return RemovalPlan(parse_units(args.remove))


def cmd_blocks(args) -> int:
    config = load_unet_config(args.unet_config)
    rows = block_map(config, resolution=args.resolution, vae_scale_factor=args.vae_scale_factor)
    if args.json:
        print(json.dumps({"params": total(rows), "macs": total(rows, "macs"),
                          "rows": [r.to_dict() for r in rows if r.depth <= args.depth]}, indent=1))
    else:
        print(format_table(rows, max_depth=args.depth))
    return 0


def cmd_prune(args) -> int:
    if args.unet_config is None and args.teacher is None:
        raise ValueError("prune needs --unet-config (with --dry-run) or --teacher")
    config = load_unet_config(args.unet_config or args.teacher)
    plan = _plan(args, config)
    kind = plan_kind(config, plan)
    teacher_params = count_params(config)
    report = {"name": plan.name, "units": sorted(plan.units), "kind": kind, "teacher_params": teacher_params}
    if kind == "config":
        cfg = student_config(config, plan)
        report |= {"params": count_params(cfg), "config": cfg, "name_map": name_map(config, plan)}
    else:  # the teacher with the skipped modules not counted
        skipped = sum(p.numel() for path, _ in runtime_modules(config, plan)
                      for p in meta_unet(config).get_submodule(path).parameters())
        report |= {"params": teacher_params - skipped, "config": None, "name_map": None}
    if not args.dry_run:
        if kind != "config":
            raise ValueError("this plan is runtime-only (no diffusers config expresses it), so there is no student "
                             "to export; ablate it at run time instead (studio.removal.ablate)")
        if args.teacher is None or args.out is None:
            raise ValueError("prune without --dry-run needs --teacher FOLDER and --out DIR")
        from diffusers import UNet2DConditionModel

        folder, subfolder = _unet_folder(args.teacher)
        teacher = UNet2DConditionModel.from_pretrained(folder, subfolder=subfolder)
        student, names = build_student(teacher, plan)
        report["out"] = str(export_student(student, names, plan, args.out, teacher=str(args.teacher),
                                           teacher_params=teacher_params))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{plan.name}: {kind} plan, {len(plan.units)} units; params {teacher_params:,} -> {report['params']:,} "
              f"({report['params'] / teacher_params:.1%})")
        if report.get("out"):
            print(f"student written to {report['out']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``blocks`` and ``prune`` subcommands to the studio CLI."""
    blocks = subparsers.add_parser("blocks", help="block map of a UNet: params and MACs per block/layer")
    blocks.add_argument("--unet-config", required=True,
                        help="UNet config.json, UNet folder or pipeline folder (assets/configs/*.json)")
    blocks.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: the config's)")
    blocks.add_argument("--vae-scale-factor", type=int, default=8, help="pixels per latent (8 for SD/SDXL)")
    blocks.add_argument("--depth", type=int, default=2,
                        help="0 blocks, 1 resnets/attentions, 2 transformer layers, 3 attn1/attn2/ff")
    blocks.add_argument("--json", action="store_true")
    blocks.set_defaults(func=cmd_blocks)

    prune = subparsers.add_parser("prune", help="remove layers: build (or dry-run) a student UNet")
    what = prune.add_mutually_exclusive_group(required=True)
    what.add_argument("--recipe", choices=sorted(RECIPES), help="named recipe")
    what.add_argument("--remove", help="comma-separated unit ids, e.g. down_blocks.2.attentions.1.transformer_blocks.3")
    prune.add_argument("--keep", choices=("spread", "first"), default="spread",
                       help="which transformer layers a recipe keeps when it shortens a stack")
    prune.add_argument("--unet-config", help="teacher UNet config (file or folder); default: the --teacher's")
    prune.add_argument("--teacher", help="teacher diffusers UNet or pipeline folder (weights are copied from it)")
    prune.add_argument("--out", help="output folder for the student UNet")
    prune.add_argument("--dry-run", action="store_true", help="only report the student (meta device, no weights)")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(func=cmd_prune)
