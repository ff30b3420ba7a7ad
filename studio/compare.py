"""Side-by-side generation: one request, several models, the same seed; stats relative to the first model.

    results = generate_side_by_side(cache, ["demo-teacher", "demo-ssd"], GenerateRequest(prompt="a red star"))
    rows = stats_rows(results)
"""
from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from studio.generation import MAX_SEED, GenerateRequest, GenerateResult, OnStep, ShouldStop, generate
from studio.loading import ModelCache
from studio.lora import LoraRef

MAX_MODELS = 4
STATS_COLUMNS = ["model", "seed", "latency (s)", "speed-up vs first", "it/s", "peak memory (MB)", "UNet params (M)"]


def check_models(models: list[str]) -> list[str]:
    models = [m for m in models if m]
    if not models:
        raise ValueError("choose at least one model")
    if len(models) > MAX_MODELS:
        raise ValueError(f"choose at most {MAX_MODELS} models at once; got {len(models)}")
    if len(set(models)) != len(models):
        raise ValueError("each model may be chosen once")
    return models


def iter_side_by_side(cache: ModelCache, models: list[str], request: GenerateRequest, *,
                      roots: list[Path] | None = None, loras: dict[str, list[LoraRef]] | None = None,
                      on_step: OnStep | None = None,
                      should_stop: ShouldStop | None = None) -> Iterator[GenerateResult]:
    """Yield each model's result as soon as it is ready; every model gets the same (resolved) seed.

    ``loras`` maps a model name to the LoRAs (with scales) applied to that model only.
    """
    models = check_models(models)
    if request.seed == -1:
        request = replace(request, seed=secrets.randbelow(MAX_SEED + 1))
    for name in models:
        pipe = cache.get(name, roots=roots)
        yield generate(pipe, request, model_name=name, loras=(loras or {}).get(name, []), roots=roots,
                       on_step=on_step, should_stop=should_stop)


def generate_side_by_side(cache: ModelCache, models: list[str], request: GenerateRequest,
                          **kwargs) -> list[GenerateResult]:
    return list(iter_side_by_side(cache, models, request, **kwargs))


def stats_rows(results: list[GenerateResult]) -> list[list]:
    """One row per model; speed-up = first model's latency / this model's latency."""
    if not results:
        return []
    first = results[0].stats.latency_s
    return [[r.model, r.seed, round(r.stats.latency_s, 3), round(first / r.stats.latency_s, 2),
             round(r.stats.it_per_s, 2), round(r.stats.peak_memory_mb, 1), round(r.stats.unet_params / 1e6, 3)]
            for r in results]
