"""Whole-generation benchmark: median latency of each model in one run, and ratios to the first model.

    python -m studio bench --model demo-teacher --model demo-vega --steps 20 --repeats 5

Warm-up runs are excluded; the models alternate within each repeat so drift in machine load hits all of them.
Each call goes through the same path as the Generate tab (``compare.run_model``: VAE choice, low-VRAM mode,
out-of-memory retry); memory columns are the last call's (weights resident for the model, peak added by the call).
"""
from __future__ import annotations

import statistics
from dataclasses import replace

from studio.compare import check_models, run_model
from studio.generation import GenerateRequest
from studio.loading import ModelCache, resolve_spec

BENCH_COLUMNS = ["model", "median latency (s)", "min (s)", "speed-up vs first", "it/s", "weights (MB)",
                 "peak added (MB)", "UNet params (M)"]


def bench_generate(cache: ModelCache, models: list, request: GenerateRequest, *, repeats: int = 5,
                   warmup: int = 1, on_step=None) -> list[dict]:
    """Time ``request`` on each model ``repeats`` times (after ``warmup`` untimed runs), interleaved. ``on_step``
    gets each run's measured latency (``info["latency_s"]``, ``info["timed"]``) as it finishes."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}")
    specs = [m if not isinstance(m, str) else resolve_spec(m) for m in check_models(models)]
    request = replace(request, seed=0 if request.seed == -1 else request.seed)
    times = {s.name: [] for s in specs}
    last = {}
    total = (warmup + repeats) * len(specs)
    for i in range(warmup + repeats):
        for k, spec in enumerate(specs):
            result = run_model(cache, spec, request, warmup=False)
            if i >= warmup:
                times[spec.name].append(result.stats.latency_s)
            last[spec.name] = result.stats
            if on_step is not None:
                on_step(i * len(specs) + k + 1, total, {"model": spec.name, "latency_s": result.stats.latency_s,
                                                         "timed": i >= warmup})
    first = statistics.median(times[specs[0].name])
    rows = []
    for spec in specs:
        med, stats = statistics.median(times[spec.name]), last[spec.name]
        rows.append(dict(zip(BENCH_COLUMNS, [spec.name, round(med, 4), round(min(times[spec.name]), 4),
                                             round(first / med, 2), round(request.steps / med, 1),
                                             round(stats.weights_mb, 1), round(stats.peak_added_mb, 1),
                                             round(stats.unet_params / 1e6, 3)])))
    return rows
