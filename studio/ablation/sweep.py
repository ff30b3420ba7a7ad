"""Leave-one-out sweep: remove each unit alone, compare with the full model over prompts x seeds, rank by damage
(1 - SSIM) per million parameters saved; every unit's row is cached on disk.

    result = sweep(pipe, config, model_name="demo-teacher")   # result.rows, least harmful per parameter first
    result.to_csv("sweep.csv")
"""
from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from studio.ablation.compare import (OnStep, ShouldStop, pairs_of, plan_applied, resolution_of, run_pairs,
                                     text_tokens)
from studio.ablation.config import AblationConfig
from studio.ablation.cost import plan_cost, removable_units
from studio.ablation.metrics import fidelity, psnr, ssim
from studio.generation import GenerationCancelled
from studio.paths import data_dir
from studio.removal import RemovalPlan, parse_unit

CACHE_VERSION = 1  # bump when the cached row format or the metrics change


SWEEP_COLUMNS = ("rank", "unit", "kind", "params_saved", "macs_saved", "damage", "damage_per_mparam", "ssim", "psnr",
                 "fidelity_drop", "latency_ratio")


@dataclass
class SweepResult:
    """Leave-one-out rows ranked by ``damage_per_mparam`` (least harmful per parameter saved first)."""

    model: str
    config: AblationConfig
    rows: list[dict]  # one dict per unit, keys SWEEP_COLUMNS
    cached: int  # rows served from the on-disk cache
    computed: int  # rows generated now
    cancelled: bool  # should_stop() ended the sweep early: rows holds the units finished so far
    wall_s: float

    def table(self) -> list[list]:
        return [[row[c] for c in SWEEP_COLUMNS] for row in self.rows]

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def weights_fingerprint(unet: torch.nn.Module) -> str:
    """Hash of every tensor's name, shape, dtype and ~4096 evenly strided values (exact bytes, cheap on SDXL)."""
    digest = hashlib.sha256()
    for name, t in unet.state_dict().items():
        flat = t.detach().flatten()
        sample = flat[::max(1, flat.numel() // 4096)].float().cpu().numpy()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


def sweep_dir() -> Path:
    path = data_dir() / "sweeps"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=list).encode()).hexdigest()[:24]


def _run_pairs(pipe, plan: RemovalPlan | None, config: AblationConfig, tick, should_stop) -> list:
    """Generate every pair with ``plan`` applied (runtime ablation when it can: no copy of the UNet)."""
    with plan_applied(pipe, plan, prefer_student=False) as view:
        return run_pairs(view, config, model_name="sweep", on_step=tick, should_stop=should_stop)


def _full_folder(base: dict) -> Path:
    return sweep_dir() / f"full-{_key(base)}"


def _full_reference(pipe, config: AblationConfig, base: dict, tick, should_stop) -> tuple[list[Image.Image], float]:
    """The full model's images and summed latency for the config's pairs, cached as PNGs under sweeps/."""
    folder = _full_folder(base)
    meta = folder / "meta.json"
    n = len(pairs_of(config))
    if meta.is_file():
        images = [Image.open(folder / f"{i}.png").convert("RGB") for i in range(n)]
        return images, json.loads(meta.read_text())["latency_s"]
    results = _run_pairs(pipe, None, config, tick, should_stop)
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(results):
        r.images[0].save(folder / f"{i}.png")
    latency = sum(r.stats.latency_s for r in results)
    meta.write_text(json.dumps({"key": base, "latency_s": latency}, indent=1))
    return [r.images[0] for r in results], latency


def sweep_files(pipe: StableDiffusionXLPipeline, config: AblationConfig, *, model_name: str | None = None,
                units: list[str] | None = None, groups: bool = False) -> tuple[list[str], dict, dict[str, Path]]:
    """(units, cache key, {unit: its cached row file}) of a sweep; a unit whose file exists costs nothing."""
    model_name = model_name or config.model
    units = list(units) if units is not None else removable_units(dict(pipe.unet.config), groups=groups)
    if not units:
        raise ValueError("sweep: no units to try")
    base = {"v": CACHE_VERSION, "model": model_name, "weights": weights_fingerprint(pipe.unet),
            "prompts": config.prompts, "seeds": config.seeds, "steps": config.steps, "guidance": config.guidance,
            "resolution": resolution_of(pipe, config)}
    return units, base, {u: sweep_dir() / f"{_key(base, u)}.json" for u in units}


def full_reference_cached(base: dict) -> bool:
    """Whether the full model's images for a sweep's cache key are on disk."""
    return (_full_folder(base) / "meta.json").is_file()


def sweep(pipe: StableDiffusionXLPipeline, config: AblationConfig, *, model_name: str | None = None,
          units: list[str] | None = None, groups: bool = False, on_step: OnStep | None = None,
          should_stop: ShouldStop | None = None) -> SweepResult:
    """Leave-one-out over ``units`` (default ``removable_units``): remove each alone, compare with the full model.

    Args:
        pipe (`StableDiffusionXLPipeline`): the teacher (its UNet is ablated in place and restored).
        config (`AblationConfig`): prompts, seeds, steps, guidance, resolution (its ``units``/``recipe`` are
            ignored: pass ``units`` to sweep a subset).
        model_name (`str`, *optional*): the cache key's model name; default ``config.model``.
        groups (`bool`): also try whole attentions and the whole mid block.
        on_step (`callable`, *optional*): ``on_step(step, total, info)`` with steps counted over the whole sweep
            (cached units cost no steps and are not reported).
        should_stop (`callable`, *optional*): polled every step; the sweep then returns ``cancelled=True`` with the
            units finished so far (each finished unit is already cached).

    Every unit's row is cached as JSON under ``data_dir()/sweeps/`` keyed by a hash of (model name, UNet weights
    fingerprint, unit, prompts, seeds, steps, guidance, resolution), so a repeated sweep generates nothing.
    """
    start = time.perf_counter()
    model_name = model_name or config.model
    unet_config = dict(pipe.unet.config)
    units, base, files = sweep_files(pipe, config, model_name=model_name, units=units, groups=groups)
    resolution = base["resolution"]
    todo = [u for u in units if not files[u].is_file()]
    costs = {u: plan_cost(unet_config, RemovalPlan({u}), resolution=resolution,  # validates every new unit
                          vae_scale_factor=pipe.vae_scale_factor, text_tokens=text_tokens(pipe)) for u in todo}
    pairs = pairs_of(config)
    full_cached = full_reference_cached(base)
    total = (len(todo) + (not full_cached)) * len(pairs) * config.steps if todo else 0
    done = [0]

    def tick(step, steps, info):
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total, info)

    rows, cancelled, full = [], False, None
    for unit in units:
        if files[unit].is_file():
            rows.append(json.loads(files[unit].read_text())["row"])
            continue
        try:
            if full is None:
                full = _full_reference(pipe, config, base, tick, should_stop)
            unit_tick = lambda s, n, info, u=unit: tick(s, n, {**info, "unit": u})  # noqa: E731
            results = _run_pairs(pipe, RemovalPlan({unit}), config, unit_tick, should_stop)
        except GenerationCancelled:
            cancelled = True
            break
        row = _sweep_row(unit, costs[unit], full, [r.images[0] for r in results],
                         sum(r.stats.latency_s for r in results), pairs)
        files[unit].write_text(json.dumps({"key": base, "unit": unit, "row": row}, indent=1))
        rows.append(row)
    rows.sort(key=lambda r: (r["damage_per_mparam"], r["unit"]))
    for i, row in enumerate(rows):
        row["rank"] = i + 1
    computed = sum(1 for u in todo if files[u].is_file())
    return SweepResult(model_name, config, rows, len(rows) - computed, computed, cancelled,
                       time.perf_counter() - start)


def _sweep_row(unit: str, cost: dict, full: tuple[list[Image.Image], float], images: list[Image.Image],
               latency: float, pairs: list[tuple[str, int]]) -> dict:
    full_images, full_latency = full
    ssims = [ssim(a, b) for a, b in zip(full_images, images)]
    psnrs = [min(psnr(a, b), 100.0) for a, b in zip(full_images, images)]  # identical images: capped for JSON/CSV
    drops = [(fa - fb) if fa is not None and fb is not None else None
             for fa, fb in ((fidelity(a, p), fidelity(b, p)) for a, b, (p, _) in zip(full_images, images, pairs))]
    drops = [d for d in drops if d is not None]
    damage = 1.0 - float(np.mean(ssims))
    return {"rank": 0, "unit": unit, "kind": parse_unit(unit)[0], "params_saved": cost["delta_params"],
            "macs_saved": cost["delta_macs"], "damage": damage,
            "damage_per_mparam": damage / max(cost["delta_params"] / 1e6, 1e-9), "ssim": float(np.mean(ssims)),
            "psnr": float(np.mean(psnrs)), "fidelity_drop": float(np.mean(drops)) if drops else None,
            "latency_ratio": latency / full_latency}
