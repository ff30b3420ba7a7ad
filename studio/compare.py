"""Side-by-side generation: one request, several models, the same seed; timed fairly, each model's memory its own.

    for result in iter_side_by_side(cache, ["demo-teacher", "demo-ssd"], GenerateRequest(prompt="a red star")):
        print(result.model, result.error or result.stats.latency_s)
    rows = stats_rows(results)

Fair timing: the first call after a model is loaded pays one-off costs (CUDA start-up and kernel selection, first
touch of its weights), so each model gets an untimed warm-up call (``WARMUP_STEPS`` steps at the requested size)
before its timed one; the warm-up's wall time is reported on its own. Out of memory: the other models are evicted,
the memory returned, and the call retried once with tiled VAE decoding; a second failure is a clear message. A model
that fails yields a result with ``error`` set, and the other models still run.
"""
from __future__ import annotations

import logging
import math
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch

from studio.generation import (MAX_SEED, GenerateRequest, GenerateResult, GenerationCancelled, OnStep, ShouldStop,
                               card_request, condition_request, generate)
from studio.hosting import Caps
from studio.loading import ModelCache, resolve_spec
from studio.lora import LoraRef
from studio.memory import activation_bytes
from studio.registry import ModelSpec

MAX_MODELS = 4
WARMUP_STEPS = 2
NOTE_CHARS = 40  # the stats table's note on a failed model: its column above says the rest
STATS_COLUMNS = ["model", "seed", "latency (s)", "speed-up vs first", "it/s", "weights (MB)", "peak added (MB)",
                 "warm-up (s)", "UNet params (M)", "note", "LoRA"]
STATS_CAPTION = ("Latency: the timed call only — each model's first call after loading is an untimed warm-up "
                 f"({WARMUP_STEPS} steps, same size; its time under 'warm-up'). Speed-up = first model's latency / "
                 "this model's. Weights = resident for this model (shared text encoders and VAE included); peak "
                 "added = memory its call added at the peak (CUDA allocator, or process RSS on a CPU).")
log = logging.getLogger(__name__)


class OutOfMemory(RuntimeError):
    """A model ran out of memory twice (the second time alone in memory); the message says what to lower."""


def check_models(models: list) -> list:
    models = [m for m in models if m]
    if not models:
        raise ValueError("choose at least one model")
    if len(models) > MAX_MODELS:
        raise ValueError(f"choose at most {MAX_MODELS} models at once; got {len(models)}")
    names = [m.name if isinstance(m, ModelSpec) else m for m in models]
    if len(set(names)) != len(names):
        raise ValueError("each model may be chosen once")
    return models


def run_model(cache: ModelCache, spec: ModelSpec, request: GenerateRequest, *, roots: list[Path] | None = None,
              loras: list[LoraRef] = (), warmup: bool = True, on_step: OnStep | None = None,
              should_stop: ShouldStop | None = None) -> GenerateResult:
    """Load (if needed), warm up (first call after loading), generate; on CUDA out-of-memory free everything
    else and retry once with tiled decoding, then raise :class:`OutOfMemory`. The request's condition image is
    prepared for a conditional model and dropped for the others (``condition_request``)."""
    request = condition_request(spec, request)
    for attempt in (1, 2):
        try:
            return _run_once(cache, spec, request, roots=roots, loras=loras, warmup=warmup, on_step=on_step,
                             should_stop=should_stop, retry=attempt == 2)
        except torch.OutOfMemoryError as err:
            cache.free(keep=spec.name)
            if attempt == 2:
                raise OutOfMemory(
                    f"{spec.name} ran out of memory at {request.width or 'native'}×{request.height or 'native'} "
                    f"with {request.batch_size} image(s), even alone in memory with tiled VAE decoding: lower the "
                    f"size or the images per model, or turn on low VRAM (model CPU offload)") from err
            log.warning("%s: out of memory (%s); other models evicted, retrying once with tiled decoding",
                        spec.name, err)
    raise AssertionError("unreachable")


def _run_once(cache, spec, request, *, roots, loras, warmup, on_step, should_stop, retry) -> GenerateResult:
    pipe = cache.get(spec, workspace_bytes=_workspace(cache, spec, request))
    common = dict(model_name=spec.name, loras=list(loras), roots=roots, vae=cache.vae(request.vae, pipe),
                  offload_device=cache.offload_device, tile_vae=retry, should_stop=should_stop)
    warmup_s = None
    if warmup and not cache.is_warm(spec.name):
        start = time.perf_counter()
        steps = WARMUP_STEPS if request.init_image is None else max(WARMUP_STEPS, math.ceil(1 / request.strength))
        try:  # img2img runs strength × steps: at least one of them
            generate(pipe, replace(request, steps=min(steps, request.steps), batch_size=1), **common,
                     on_step=_tagged(on_step, "warm-up"))
        except GenerationCancelled as err:  # its warm-up is not the user's run: no step of that one was made
            raise GenerationCancelled(f"generation with {spec.name} was cancelled during its warm-up, at step "
                                      f"0/{request.steps}", model=spec.name, step=0, total=request.steps) from err
        warmup_s = time.perf_counter() - start
    result = generate(pipe, request, **common, on_step=on_step)
    cache.mark_warm(spec.name)
    result.stats.warmup_s, result.stats.retried = warmup_s, retry
    return result


def _workspace(cache: ModelCache, spec: ModelSpec, request: GenerateRequest) -> int:
    size = spec.default_size or 1024
    return activation_bytes(request.width or size, request.height or size, request.batch_size, cache.runtime.dtype,
                            cfg=request.guidance > 1)


def _tagged(on_step: OnStep | None, phase: str) -> OnStep | None:
    if on_step is None:
        return None
    return lambda step, total, info: on_step(step, total, {**info, "phase": phase})


def iter_side_by_side(cache: ModelCache, models: list[str | ModelSpec], request: GenerateRequest, *,
                      roots: list[Path] | None = None, loras: dict[str, list[LoraRef]] | None = None,
                      warmup: bool = True, on_step: OnStep | None = None,
                      should_stop: ShouldStop | None = None, caps: Caps | None = None) -> Iterator[GenerateResult]:
    """Yield each model's result as soon as it is ready; every model gets the same (resolved) seed.

    Models are registry names, paths or resolved specs; every name is resolved before anything runs (a typo fails
    at once). The request's sampler, steps and CFG are for the ordinary models; beside one of them a few-step model
    (an LCM, an LCM-LoRA), wherever it is in the list, runs with its own card's (``card_request``), so an LCM at 4
    steps sits beside its teacher at 20. Few-step models alone run with the request (their steps are the user's).
    ``loras`` maps a model name to the LoRAs (with scales) applied to that model only. A model that cannot
    load or run yields ``GenerateResult.failed`` and the next model still runs; cancelling stops the whole run.
    A conditional model gets the request's condition image (a text-to-image model beside it ignores it); without
    one the run fails before anything loads. ``caps`` (a hosting's limits: models per request, steps, size, images
    per model) are checked before anything resolves or loads; `CapError` (a ValueError) names the value, the cap and its environment variable.
    """
    if caps is not None:
        caps.check_generation(models=len([m for m in models if m]), steps=request.steps, width=request.width,
                              height=request.height, batch=request.batch_size)
    specs = [m if isinstance(m, ModelSpec) else resolve_spec(m, roots=roots) for m in check_models(models)]
    for spec in specs:  # a conditional model without a fitting condition image fails before anything loads
        if spec.conditional:
            condition_request(spec, request)
    if request.seed == -1:
        request = replace(request, seed=secrets.randbelow(MAX_SEED + 1))
    mixed = any(not spec.few_step for spec in specs)
    for spec in specs:
        try:
            own = card_request(spec, request) if mixed else request
            yield run_model(cache, spec, own, roots=roots, loras=(loras or {}).get(spec.name, []),
                            warmup=warmup, on_step=on_step, should_stop=should_stop)
        except GenerationCancelled:
            raise
        except Exception as err:  # load errors, out of memory, a LoRA that does not fit: this column only
            log.exception("side-by-side: %s failed", spec.name)
            message = str(err) if isinstance(err, (ValueError, OutOfMemory)) else f"{type(err).__name__}: {err}"
            yield GenerateResult.failed(spec.name, request, message)


def lora_label(loras: list[LoraRef]) -> str:
    """``name ×scale`` of each LoRA applied to a model ('' without one)."""
    return ", ".join(f"{ref.name} ×{ref.scale:g}" for ref in loras)


def short_reason(error: str) -> str:
    """A failed model's reason in a few words (≤ NOTE_CHARS), for the stats table: a long message would squeeze the
    table's other columns off-screen. The model's column (and ``GenerateResult.error``) keeps the whole message."""
    if " is not available: " in error:  # ModelLoadError: neither a local copy nor the hub
        return "weights not on this machine"
    if " ran out of memory " in error:  # OutOfMemory
        return "out of memory"
    first = error.split(". ")[0].split(": ")[0]
    return first if len(first) <= NOTE_CHARS else first[:NOTE_CHARS - 1] + "…"


def stats_rows(results: list[GenerateResult]) -> list[list]:
    """One row per model; speed-up = the first successful model's latency / this model's latency."""
    done = [r for r in results if not r.error]
    first = done[0].stats.latency_s if done else None
    rows = []
    for r in results:
        if r.error:  # a few words (the whole message is in result.error, the UI's column and the CLI)
            note = short_reason(r.error) if r.cancelled else f"failed: {short_reason(r.error)}"
            rows.append([r.model, r.seed, None, None, None, None, None, None, None, note, lora_label(r.loras)])
            continue
        s = r.stats
        note = "; ".join(n for n, on in (("VAE tiled", s.vae_tiled), ("low VRAM (CPU offload)", s.offloaded),
                                         ("retried after out-of-memory", s.retried)) if on)
        rows.append([r.model, r.seed, round(s.latency_s, 3), round(first / s.latency_s, 2), round(s.it_per_s, 2),
                     round(s.weights_mb, 1), round(s.peak_added_mb, 1),
                     None if s.warmup_s is None else round(s.warmup_s, 3), round(s.unet_params / 1e6, 3), note,
                     lora_label(r.loras)])
    return rows
