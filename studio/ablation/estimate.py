"""How long a sweep will take, from a measured cost per denoising step on this machine (not a guess): one short
generation is timed step by step once per model, resolution and guidance, then every estimate is arithmetic.

    cost = step_cost(pipe, config)                        # StepCost(sec_per_step, overhead_s), measured once
    est = estimate_sweep(pipe, config, units=None)        # SweepEstimate: units to run, generations, seconds
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from studio.ablation.compare import pairs_of, resolution_of
from studio.ablation.config import AblationConfig
from studio.ablation.sweep import full_reference_cached, sweep_files
from studio.generation import GenerateRequest, generate

PROBE_STEPS = 4  # steps of the timed generation (the first step's warm-up is left out of the per-step cost)
LONG_RUN_S = 60.0  # the Layers tab asks before starting a sweep estimated longer than this
_MEASURED: dict[tuple, StepCost] = {}


@dataclass(frozen=True)
class StepCost:
    sec_per_step: float  # one denoising step (both CFG branches when guidance > 1)
    overhead_s: float  # per image besides the steps: text encoders, VAE decode


@dataclass(frozen=True)
class SweepEstimate:
    units: int  # units the sweep tries
    todo: int  # of them, not in the on-disk cache
    generations: int  # images to generate (the full model's reference included when not cached)
    steps: int  # denoising steps per image
    cost: StepCost
    seconds: float

    def describe(self) -> str:
        if not self.generations:
            return f"{self.units} units, all in the cache: no generation needed (instant)."
        cached = f" ({self.units - self.todo} already in the cache)" if self.todo < self.units else ""
        return (f"{self.todo} of {self.units} units to run{cached}: {self.generations} images × {self.steps} steps "
                f"≈ **{format_duration(self.seconds)}** (measured here: {self.cost.sec_per_step:.3f} s per step + "
                f"{self.cost.overhead_s:.2f} s per image).")


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def step_cost(pipe, config: AblationConfig) -> StepCost:
    """Seconds per denoising step and per-image overhead of ``pipe`` at the config's resolution and guidance,
    measured by one ``PROBE_STEPS``-step generation (cached per pipeline, resolution, guidance on/off)."""
    key = (id(pipe.unet), resolution_of(pipe, config), config.guidance > 1)
    if key not in _MEASURED:
        stamps = []
        size = config.resolution
        start = time.perf_counter()
        generate(pipe, GenerateRequest(prompt=config.prompts[0], seed=config.seeds[0], steps=PROBE_STEPS,
                                       guidance=config.guidance, width=size, height=size),
                 model_name="estimate", on_step=lambda s, n, info: stamps.append(time.perf_counter()))
        total = time.perf_counter() - start
        per_step = float(np.median(np.diff(stamps))) if len(stamps) > 2 else total / PROBE_STEPS
        _MEASURED[key] = StepCost(per_step, max(0.0, total - PROBE_STEPS * per_step))
    return _MEASURED[key]


def estimate_sweep(pipe, config: AblationConfig, *, model_name: str | None = None, units: list[str] | None = None,
                   groups: bool = False) -> SweepEstimate:
    """What ``sweep`` with these arguments would generate, and how long that takes on this machine."""
    units, base, files = sweep_files(pipe, config, model_name=model_name, units=units, groups=groups)
    todo = sum(not f.is_file() for f in files.values())
    generations = (todo + (todo > 0 and not full_reference_cached(base))) * len(pairs_of(config))
    cost = step_cost(pipe, config) if generations else StepCost(0.0, 0.0)
    return SweepEstimate(len(units), todo, generations, config.steps, cost,
                         generations * (config.steps * cost.sec_per_step + cost.overhead_s))
