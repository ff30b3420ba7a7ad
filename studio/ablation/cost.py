"""What a plan costs and saves, without weights: block-map parameters and MACs (meta device), the units a sweep
tries, and a registry model's UNet config read from disk.

    cost = plan_cost(unet_config, plan, resolution=1024, vae_scale_factor=8)   # params, MACs, kind
    unet_config, vae_scale_factor, native = model_facts("sdxl")
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from studio.blocks import BlockRow, block_map, full_config, unet_layout
from studio.released import released_models, released_unet_config, released_vae_scale_factor
from studio.removal import RemovalPlan, runtime_modules, student_config, validate_plan


@functools.lru_cache(maxsize=32)
def _cached_rows(config_json: str, resolution: int, vae_scale_factor: int, text_tokens: int) -> tuple[BlockRow, ...]:
    return tuple(block_map(json.loads(config_json), resolution=resolution, vae_scale_factor=vae_scale_factor,
                           text_tokens=text_tokens))


def model_rows(unet_config: dict, resolution: int, vae_scale_factor: int, text_tokens: int = 77) -> list[BlockRow]:
    """``block_map`` rows (cached: the FLOP-counting pass takes seconds even on the meta device)."""
    return list(_cached_rows(json.dumps(full_config(dict(unet_config)), sort_keys=True), resolution,
                             vae_scale_factor, text_tokens))


def plan_cost(unet_config: dict, plan: RemovalPlan, *, resolution: int, vae_scale_factor: int,
              text_tokens: int = 77) -> dict:
    """Kind, teacher/student params and MACs (one batch-1 UNet forward at ``resolution``) of a validated plan.

    When ``ablate`` can skip the plan's modules, their own block-map rows are subtracted (exact: a config student
    keeps every other module at the same shape); otherwise (pairs, levels) the student's block map is measured.
    """
    unet_config = dict(unet_config)
    kind = validate_plan(unet_config, plan)
    rows = model_rows(unet_config, resolution, vae_scale_factor, text_tokens)
    params, macs = (sum(getattr(r, f) for r in rows if r.depth == 0) for f in ("params", "macs"))
    try:
        by_unit = {r.unit: r for r in rows}
        skipped = [by_unit[path] for path, _ in runtime_modules(unet_config, plan)]
        s_params = params - sum(r.params for r in skipped)
        s_macs = macs - sum(r.macs for r in skipped)
    except ValueError:
        srows = model_rows(student_config(unet_config, plan), resolution, vae_scale_factor, text_tokens)
        s_params, s_macs = (sum(getattr(r, f) for r in srows if r.depth == 0) for f in ("params", "macs"))
    return {"kind": kind, "params": params, "student_params": s_params, "delta_params": params - s_params,
            "macs": macs, "student_macs": s_macs, "delta_macs": macs - s_macs}


def removable_units(unet_config: dict, *, groups: bool = False) -> list[str]:
    """Units a leave-one-out sweep tries, in layout order: every transformer layer of a stack deeper than one (a
    depth-1 stack is tried as its whole attention), every mid-block attention, every resnet ``ablate`` can skip;
    with ``groups`` also every whole attention and the whole mid block."""
    return list(_removable(json.dumps(full_config(dict(unet_config)), sort_keys=True), groups))


@functools.lru_cache(maxsize=32)
def _removable(config_json: str, groups: bool) -> tuple[str, ...]:
    unet_config = json.loads(config_json)
    out = []
    for b in unet_layout(unet_config):
        for i, skippable in enumerate(b.skippable_resnets):
            if skippable:
                out.append(f"{b.name}.resnets.{i}")
        for a, depth in enumerate(b.depths):
            if depth > 1:
                out += [f"{b.name}.attentions.{a}.transformer_blocks.{k}" for k in range(depth)]
            if depth == 1 or groups or b.kind == "mid":
                out.append(f"{b.name}.attentions.{a}")
        if groups and b.kind == "mid":
            out.append("mid_block")
    valid = []
    for unit in out:
        try:  # every candidate is a run-time skip; _resolve still rejects e.g. a block's only resnet
            runtime_modules(unet_config, RemovalPlan({unit}))
            valid.append(unit)
        except ValueError:
            pass
    return tuple(valid)


def model_facts(name: str) -> tuple[dict, int, int]:
    """(UNet config, VAE scale factor, native resolution in pixels) of ``name`` without loading weights: a registry
    model's config files on disk (a local folder, or the Hugging Face cache), else the released config committed
    under ``assets/configs/`` (``studio.released``: SDXL, SSD-1B, Vega, SD 1.4, BK-SDM); ValueError if neither."""
    from studio.registry import get_spec, list_models

    if name not in {s.name for s in list_models()}:
        unet = released_unet_config(name)  # ValueError: neither a registry model nor a released config
        factor = released_vae_scale_factor(name)
        return unet, factor, unet["sample_size"] * factor

    def read(spec, component: str) -> dict | None:
        if spec.source_kind == "folder":
            folder = Path(spec.source)
            for file in [folder / component / "config.json"] + ([folder / "config.json"] if component == "unet"
                                                                  else []):
                if file.is_file():
                    return json.loads(file.read_text())
        elif spec.source_kind == "hub":
            from huggingface_hub import try_to_load_from_cache

            file = try_to_load_from_cache(spec.source, f"{component}/config.json")
            if isinstance(file, str):
                return json.loads(Path(file).read_text())
        return None

    spec = get_spec(name)
    vae_owner = get_spec(spec.base) if spec.base else spec
    unet = read(spec, "unet")
    if unet is None and spec.name in released_models():
        unet = released_unet_config(spec.name)
    if unet is None:
        raise ValueError(f"model {spec.name!r}: no unet config on this machine ({spec.source}); load it once "
                         f"(e.g. in the Generate tab) or download it")
    vae = read(vae_owner, "vae")
    if vae is None and vae_owner.name not in released_models():
        raise ValueError(f"model {spec.name!r}: no vae config on this machine ({vae_owner.source}); load it once "
                         f"(e.g. in the Generate tab) or download it")
    factor = 2 ** (len(vae["block_out_channels"]) - 1) if vae else released_vae_scale_factor(vae_owner.name)
    return unet, factor, spec.default_size or unet.get("sample_size", 128) * factor
