"""Side-by-side generation benchmark: median latency of each model in one run, and ratios to the first model.

    python -m studio bench --model demo-teacher --model demo-vega --steps 20 --repeats 5

Warm-up runs are excluded; the models alternate within each repeat so drift in machine load hits all of them.
"""
from __future__ import annotations

import statistics
from dataclasses import replace

from studio.compare import check_models
from studio.generation import GenerateRequest, generate
from studio.loading import ModelCache

BENCH_COLUMNS = ["model", "median latency (s)", "min (s)", "speed-up vs first", "it/s", "peak memory (MB)",
                 "UNet params (M)"]


def bench_generate(cache: ModelCache, models: list[str], request: GenerateRequest, *, repeats: int = 5,
                   warmup: int = 1, on_step=None) -> list[dict]:
    """Time ``request`` on each model ``repeats`` times (after ``warmup`` untimed runs), interleaved."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}")
    models = check_models(models)
    request = replace(request, seed=0 if request.seed == -1 else request.seed)
    pipes = {m: cache.get(m) for m in models}
    times = {m: [] for m in models}
    last = {}
    total = (warmup + repeats) * len(models)
    for i in range(warmup + repeats):
        for m in models:
            result = generate(pipes[m], request, model_name=m)
            if i >= warmup:
                times[m].append(result.stats.latency_s)
            last[m] = result.stats
            if on_step is not None:
                on_step(i * len(models) + models.index(m) + 1, total, {"model": m})
    first = statistics.median(times[models[0]])
    rows = []
    for m in models:
        med = statistics.median(times[m])
        rows.append(dict(zip(BENCH_COLUMNS, [m, round(med, 4), round(min(times[m]), 4), round(first / med, 2),
                                             round(request.steps / med, 1), round(last[m].peak_memory_mb, 1),
                                             round(last[m].unet_params / 1e6, 3)])))
    return rows
