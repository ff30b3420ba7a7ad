"""Sweep results drawn over the UNet layout, cells named with the studio's one unit naming (``studio.blocks.unit_label``).

    fig = plot_sweep(result, pipe.unet.config)     # a matplotlib Figure (no pyplot)
    short_label("down_blocks.2.attentions.1.transformer_blocks.3")   # "d2 a1.3"
"""
from __future__ import annotations

import numpy as np

from studio.ablation.sweep import SWEEP_COLUMNS, SweepResult
from studio.blocks import format_si, unet_layout, unit_label
from studio.removal import parse_unit

short_label = unit_label  # the name the Layers tab imports


def _slot(unit: str) -> tuple[str, str]:
    """(block, short label) of a unit for the heatmap: r1 resnet, a0 attention, a0.3 transformer layer."""
    form, g = parse_unit(unit)
    if form == "mid":
        return "mid_block", "all"
    return g[0], {"resnet": lambda: f"r{g[1]}", "attention": lambda: f"a{g[1]}",
                  "layer": lambda: f"a{g[1]}.{g[2]}", "pair": lambda: f"p{g[1]}"}[form]()


def _layout_key(unit: str) -> tuple:
    """Forward order inside a block: resnet i, then attention i (whole, then its layers 0, 1, ...)."""
    form, g = parse_unit(unit)
    if form in ("mid", "level"):
        return (-1, 0, -1)
    return (int(g[1]), 0 if form == "resnet" else 1, int(g[2]) if form == "layer" else -1)


def plot_sweep(result: SweepResult, unet_config: dict, *, metric: str = "damage"):
    """Heatmap over the UNet layout: one row per block, one cell per swept unit (layout order), coloured by
    ``metric`` (a SWEEP_COLUMNS number). Returns a ``matplotlib.figure.Figure`` (no pyplot)."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    if metric not in ("damage", "damage_per_mparam", "ssim", "psnr", "fidelity_drop", "latency_ratio"):
        raise ValueError(f"plot_sweep: metric {metric!r} is not a numeric sweep column")
    by_unit = {r["unit"]: r for r in result.rows}
    blocks = [b.name for b in unet_layout(dict(unet_config))]
    cells = {b: sorted((u for u in by_unit if _slot(u)[0] == b), key=_layout_key) for b in blocks}
    blocks = [b for b in blocks if cells[b]]
    width = max((len(c) for c in cells.values()), default=1)
    grid = np.full((len(blocks), width), np.nan)
    for i, b in enumerate(blocks):
        for j, u in enumerate(cells[b]):
            value = by_unit[u][metric]
            grid[i, j] = np.nan if value is None else value
    fig = Figure(figsize=(min(18.0, max(7.0, 3.0 + 0.6 * width)), 1.6 + 0.45 * len(blocks)), layout="constrained")
    ax = fig.subplots()
    positive = grid[np.isfinite(grid) & (grid > 0)]
    log = metric.startswith("damage") and positive.size > 1 and positive.max() > 20 * positive.min()
    norm = LogNorm(positive.min(), positive.max()) if log else None  # damage spans decades: log colours
    image = ax.imshow(np.ma.masked_invalid(np.where(grid > 0, grid, np.nan) if log else grid), cmap="magma_r",
                      norm=norm, aspect="auto")
    for i, b in enumerate(blocks):
        for j, u in enumerate(cells[b]):
            dark = np.isfinite(grid[i, j]) and image.norm(grid[i, j]) > 0.55  # the colour's position in the map
            ax.text(j, i, unit_label(u), ha="center", va="center", fontsize=6, color="white" if dark else "black")
    ax.set_yticks(range(len(blocks)), [f"{unit_label(b)} · {b}" for b in blocks], fontsize=8)
    ax.set_xticks([])
    fig.colorbar(image, ax=ax, label=metric + (" (log scale)" if log else ""), shrink=0.9)
    ax.set_title(f"{result.model}: leave-one-out {metric} per unit", fontsize=10)
    ax.set_xlabel("d/mid/u = down/mid/up block; r = resnet, a = attention, a1.3 = its transformer layer 3; "
                  "blank = not swept", fontsize=8)
    return fig


SHOWN_SWEEP_COLUMNS = [c for c in SWEEP_COLUMNS if c != "latency_ratio"]  # one timing per unit is noise: CSV only
SWEEP_HEADERS = ["rank", "unit", "kind", "params saved", "MACs saved", "damage", "damage per M params", "SSIM",
                 "PSNR (dB)", "fidelity drop", "module path"]  # SHOWN_SWEEP_COLUMNS in words (they wrap), then path


def sweep_table(rows: list[dict]) -> list[list]:
    """The ranked rows as the tab shows them: units by their short name, numbers formatted, no latency column."""
    def cell(column, value):
        if column == "unit":
            return short_label(value)
        if column in ("params_saved", "macs_saved"):
            return format_si(value)
        return f"{value:.4g}" if isinstance(value, float) else "—" if value is None else value
    return [[cell(c, row[c]) for c in SHOWN_SWEEP_COLUMNS] + [row["unit"]] for row in rows]
