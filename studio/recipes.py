"""Removal recipes: the published students (SSD-1B, Vega, KOALA, BK-SDM) as operations on a teacher's layout, so
they apply to any teacher of the same layout (SDXL's, SD 1.x's) at any width or depth.

    plan = recipe_plan("ssd-1b", teacher_config)   # a studio.removal.RemovalPlan
    RECIPES["vega"].reference_params               # the student's size from the released teacher config

``reference_params`` is checked in the tests against the released student configs in ``assets/configs/``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from studio.blocks import BlockLayout, full_config, unet_layout
from studio.removal import RemovalPlan

_LAYOUTS = {  # (down_block_types, up_block_types) a recipe's teacher must have; 2 resnets per down block, CA mid
    "sdxl": (["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2, ["CrossAttnUpBlock2D"] * 2 + ["UpBlock2D"]),
    "sd1": (["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3),
}
# Depth kept per attention, as (kept, of) at the released teacher's depth; other depths scale proportionally.
_SSD_1B = {"down_blocks.1": [(2, 2)] * 2, "down_blocks.2": [(4, 10)] * 2,
           "up_blocks.0": [(4, 10), (4, 10), (10, 10)], "up_blocks.1": [(2, 2), (1, 2), (1, 2)]}
_VEGA = {"down_blocks.1": [(1, 2)] * 2, "down_blocks.2": [(2, 10)] * 2,
         "up_blocks.0": [(2, 10)] * 3, "up_blocks.1": [(1, 2)] * 3}
_KOALA = {"down_blocks.2": [(5, 10), None], "up_blocks.0": [(5, 10), None, (5, 10)]}  # None: removed with its pair
_PAIR_1 = {f"{b}_blocks.{i}.pairs.1" for b in ("down", "up") for i in range(3)}


def kept_layers(depth: int, n: int, keep: str = "spread") -> list[int]:
    """Which ``n`` of ``depth`` transformer layers a recipe keeps: the ``first`` n, or ``spread`` evenly from first
    to last (our default: keeps the stack's input and output layers; an unofficial cosine-similarity analysis of
    SSD-1B's weights matches them to teacher layers 1, 2, 3, 7 of 10, so Segmind's choice is unknown)."""
    if keep not in ("first", "spread"):
        raise ValueError(f"keep={keep!r}: allowed values are 'first' and 'spread'")
    if keep == "first" or n == 1:
        return list(range(n))
    return [round(i * (depth - 1) / (n - 1)) for i in range(n)]


def _shrink(blocks: dict[str, BlockLayout], spec: dict, keep: str) -> set[str]:
    units = set()
    for name, targets in spec.items():
        for a, target in enumerate(targets):
            if target is None:
                continue
            depth = blocks[name].depths[a]
            n = max(1, round(depth * target[0] / target[1]))
            units |= {f"{name}.attentions.{a}.transformer_blocks.{k}" for k in range(depth)
                      if k not in kept_layers(depth, n, keep)}
    return units


@dataclass(frozen=True)
class Recipe:
    """A named removal recipe: which units of a teacher of ``layout`` to drop."""

    name: str
    layout: str  # "sdxl" | "sd1": the teacher layout it applies to (any widths and depths)
    description: str
    units: Callable[[dict[str, BlockLayout], str], set[str]]  # (teacher blocks by name, keep policy) -> unit ids
    reference_params: int  # student params from the reference teacher (assets/configs/*.json)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("ssd-1b", "sdxl", "Segmind SSD-1B: depth 10 -> 4 (up [4,4,10], [2,1,1]), mid = one resnet",
           lambda b, k: _shrink(b, _SSD_1B, k) | {"mid_block.attentions.0", "mid_block.resnets.1"}, 1_331_334_404),
    Recipe("vega", "sdxl", "Segmind Vega: depths [1,2] (down), [2,2,2], [1,1,1] (up), mid = one resnet",
           lambda b, k: _shrink(b, _VEGA, k) | {"mid_block.attentions.0", "mid_block.resnets.1"}, 745_225_604),
    Recipe("koala-700m", "sdxl", "KOALA-700M: one pair per block removed, depth 10 -> 5, no mid block",
           lambda b, k: _PAIR_1 | _shrink(b, _KOALA, k) | {"mid_block"}, 782_822_724),
    Recipe("koala-1b", "sdxl", "KOALA-1B: one pair per block removed, depth 10 -> 6 (mid too)",
           lambda b, k: _PAIR_1 | _shrink(b, {n: [t and (6, 10) for t in v] for n, v in _KOALA.items()}
                                          | {"mid_block": [(6, 10)]}, k), 1_161_184_324),
    Recipe("bk-sdm-base", "sd1", "BK-SDM-Base: one resnet/attention pair per down and up block removed",
           lambda b, k: {f"{n}.pairs.1" for n in b if n != "mid_block"}, 579_384_964),
    Recipe("bk-sdm-small", "sd1", "BK-SDM-Small: Base + the whole mid block",
           lambda b, k: {f"{n}.pairs.1" for n in b if n != "mid_block"} | {"mid_block"}, 482_346_884),
    Recipe("bk-sdm-tiny", "sd1", "BK-SDM-Tiny: Small + the innermost level (DownBlock2D / UpBlock2D)",
           lambda b, k: {f"{n}.pairs.1" for n in b if n not in ("mid_block", "down_blocks.3", "up_blocks.0")}
           | {"mid_block", "levels.3"}, 323_384_964),
)}


def recipe_plan(name: str, teacher_config: dict, *, keep: str = "spread") -> RemovalPlan:
    """The plan recipe ``name`` makes for this teacher; ValueError for unknown recipes or the wrong architecture."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; allowed: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    cfg = full_config(teacher_config)
    blocks = {b.name: b for b in unet_layout(cfg)}
    down, up = _LAYOUTS[recipe.layout]
    if (cfg["down_block_types"] != down or cfg["up_block_types"] != up
            or cfg["mid_block_type"] != "UNetMidBlock2DCrossAttn"
            or any(b.resnets != (3 if b.kind == "up" else 2) for b in blocks.values())):
        raise ValueError(
            f"recipe {name!r} needs an {recipe.layout.upper()}-layout UNet (down_block_types={down}, "
            f"up_block_types={up}, layers_per_block=2, mid_block_type='UNetMidBlock2DCrossAttn'); this config has "
            f"down_block_types={cfg['down_block_types']}, up_block_types={cfg['up_block_types']}, "
            f"layers_per_block={cfg['layers_per_block']}, mid_block_type={cfg['mid_block_type']!r}")
    return RemovalPlan(frozenset(recipe.units(blocks, keep)), name)
