"""CLI subcommands of the ablation studio: ``ablate`` (full vs pruned images and numbers) and ``sweep``.

    python -m studio ablate --model demo-teacher --remove mid_block.attentions.0 --out outputs/ablate --export slim
    python -m studio sweep --model demo-teacher --prompt "a red circle on a blue background" --csv sweep.csv
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from studio.ablation import AblationConfig, compare_ablation, config_plan, export_plan, plot_sweep, sweep
from studio.recipes import RECIPES
from studio.removal import parse_units

CONFIG_FLAGS = {  # AblationConfig field -> (flag, argparse options); every field has exactly one flag
    "model": ("--model", dict(default=None, help="registry model (default: the registry default, demo-teacher)")),
    "units": ("--remove", dict(default="", help="comma-separated unit ids to remove")),
    "recipe": ("--recipe", dict(default="", choices=["", *RECIPES], help="removal recipe (combined with --remove)")),
    "prompts": ("--prompt", dict(action="append", help="prompt (repeat for a prompt set)")),
    "seeds": ("--seed", dict(action="append", type=int, help="seed (repeat for several)")),
    "steps": ("--steps", dict(type=int, default=20, help="denoising steps")),
    "guidance": ("--guidance", dict(type=float, default=5.0, help="CFG scale")),
    "resolution": ("--resolution", dict(type=int, default=None, help="pixels (default: the model's native size)")),
}


def _add_config_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for f in fields(AblationConfig):
        if f.name not in skip:
            flag, options = CONFIG_FLAGS[f.name]
            parser.add_argument(flag, dest=f.name, **options)


def config_from_args(args: argparse.Namespace) -> AblationConfig:
    """An AblationConfig from the parsed flags (unset lists fall back to the config's defaults)."""
    from studio.registry import default_model

    values = {f.name: getattr(args, f.name) for f in fields(AblationConfig) if hasattr(args, f.name)}
    values["model"] = values.get("model") or default_model()
    if "units" in values:
        values["units"] = tuple(sorted(parse_units(values["units"] or "")))
    for name in ("prompts", "seeds"):
        if values.get(name) is None:
            values.pop(name, None)
    return AblationConfig(**values)


def _progress():
    from tqdm import tqdm

    bar = tqdm(total=0, unit="step")

    def on_step(step, total, info):
        bar.total = total
        bar.set_description(info.get("unit") or info.get("model", ""))
        bar.n = step
        bar.refresh()
    return bar, on_step


def cmd_ablate(args) -> int:
    from studio.loading import ModelCache

    config = config_from_args(args)
    pipe = ModelCache().get(config.model)
    plan = config_plan(config, pipe.unet.config)
    bar, on_step = _progress()
    cmp = compare_ablation(pipe, plan, config, on_step=on_step)
    bar.close()
    report = cmp.summary()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for i, (full, ablated) in enumerate(zip(cmp.full_images, cmp.ablated_images)):
            full.save(out / f"{i}-full.png")
            ablated.save(out / f"{i}-ablated.png")
        report["out"] = str(out)
    if args.export:
        report["exported"] = str(export_plan(pipe, plan, args.export, teacher_name=config.model))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{plan.name}: {report['kind']} plan, {len(plan.units)} units; params -{report['delta_params']:,} "
              f"({report['student_params'] / report['params']:.1%} kept), MACs -{report['delta_macs']:,}; "
              f"latency x{report['latency_ratio']:.2f}; SSIM {report['ssim']:.4f}, PSNR {report['psnr']:.2f} dB; "
              f"fidelity {report['full_fidelity']} -> {report['ablated_fidelity']}")
        for key in ("out", "exported"):
            if key in report:
                print(f"{key}: {report[key]}")
    return 0


def cmd_sweep(args) -> int:
    from studio.loading import ModelCache

    config = config_from_args(args)
    pipe = ModelCache().get(config.model)
    units = sorted(parse_units(args.units)) if args.units else None
    bar, on_step = _progress()
    result = sweep(pipe, config, units=units, groups=args.groups, on_step=on_step)
    bar.close()
    if args.csv:
        result.to_csv(args.csv)
    if args.heatmap:
        plot_sweep(result, dict(pipe.unet.config)).savefig(args.heatmap, dpi=120)
    if args.json:
        print(json.dumps({"model": result.model, "wall_s": result.wall_s, "cached": result.cached,
                          "computed": result.computed, "rows": result.rows}, indent=1))
        return 0
    print(f"{result.model}: {len(result.rows)} units ({result.cached} cached, {result.computed} generated) in "
          f"{result.wall_s:.1f} s; damage = 1 - SSIM to the full model's image, ranked by damage per M params")
    print(f"{'rank':>4} {'unit':<50} {'params':>9} {'damage':>8} {'dmg/Mp':>9} {'fid drop':>8}")
    rows = result.rows
    shown = rows if args.top is None or 2 * args.top >= len(rows) else rows[:args.top] + rows[-args.top:]
    for r in shown:
        fid = "" if r["fidelity_drop"] is None else f"{r['fidelity_drop']:.2f}"
        print(f"{r['rank']:>4} {r['unit']:<50} {r['params_saved']:>9,} {r['damage']:>8.4f} "
              f"{r['damage_per_mparam']:>9.3f} {fid:>8}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ablate`` and ``sweep`` subcommands to the studio CLI."""
    ablate = subparsers.add_parser("ablate", help="generate with and without units removed; params, MACs, SSIM")
    _add_config_args(ablate)
    ablate.add_argument("--out", help="folder for the full and ablated PNGs")
    ablate.add_argument("--export", metavar="NAME", help="also export the student as registry model NAME")
    ablate.add_argument("--json", action="store_true")
    ablate.set_defaults(func=cmd_ablate)

    sw = subparsers.add_parser("sweep", help="leave-one-out over removable units, ranked by damage per parameter")
    _add_config_args(sw, skip=("units", "recipe"))
    sw.add_argument("--units", help="comma-separated units to try (default: every removable unit)")
    sw.add_argument("--groups", action="store_true", help="also try whole attentions and the whole mid block")
    sw.add_argument("--csv", help="write the ranked rows as CSV")
    sw.add_argument("--heatmap", help="write the damage heatmap PNG")
    sw.add_argument("--top", type=int, default=None, help="print only the top and bottom N rows")
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(func=cmd_sweep)
