"""The family together: memory of three models loaded with shared components, and the time of a side-by-side run.

    python -m studio bench memory                        # the demo family, through ModelCache, in bytes
    python -m studio bench side-by-side                  # one three-model run vs the sum of three single runs
    python -m studio bench memory --real --workdir /tmp/studio-real    # SDXL, SSD-1B, Vega on their real shapes

``memory``: one ModelCache loads the three models (a student loads only its UNet; the text encoders, tokenizers and VAE
are its base's, loaded once), then each model is loaded alone in a fresh cache. The goal compares the shared load
with what it should be — the three UNets plus one text-encoder/VAE set, read from the safetensors headers on disk
(independent of the cache's own accounting) — and reports the bytes the separate loads would hold together. Bytes are
``ModelCache.memory_bytes()`` (each tensor once), cross-checked by counting distinct tensor storages, plus the
process RSS the shared load added.

``side-by-side``: after one warm-up of everything, each repeat runs the three models through ``iter_side_by_side``
(what the Generate tab does) and each model alone the same way, in a rotating order; the ratio is the three-model
run's median over the sum of the single runs' medians (1.0 = no overhead for running them together).

``--real``: the real configs with random weights in an offline Hugging Face cache laid out like the hub repos
(``studio.smoke``; built once under ``--workdir``, bf16 by default), measured in a child process that points
``HF_HUB_CACHE`` at it; the models are one at a time in memory for the separate loads.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch

from studio.bench.stats import environment, rotated, storage_bytes, summary
from studio.compare import iter_side_by_side
from studio.generation import GenerateRequest
from studio.loading import ModelCache, Runtime, choose_runtime, local_folder, weight_files
from studio.memory import free_memory, safetensors_bytes
from studio.registry import CONFIGS_DIR, DEMO_NAMES, get_spec

DEMO_FAMILY = tuple(DEMO_NAMES[k] for k in ("teacher", "ssd", "vega"))  # the three: a teacher, two students
REAL_FAMILY = ("sdxl", "ssd-1b", "vega")
PARTS = ("text_encoder", "text_encoder_2", "vae")
BUILT_MARK = "built.json"


def file_bytes(name: str, dtype: torch.dtype) -> dict[str, int]:
    """Bytes of a model's UNet and of the text encoders and VAE it uses, once loaded in ``dtype``, from the
    safetensors headers of the files ModelCache would read (a student's parts are its base's)."""
    spec = get_spec(name)
    parts_spec = get_spec(spec.base) if spec.base else spec
    folder, parts_folder = local_folder(spec), local_folder(parts_spec)
    if folder is None or parts_folder is None:
        raise ValueError(f"model {name!r} is not on this machine (local folder or Hugging Face cache)")
    variant = "fp16" if dtype in (torch.float16, torch.bfloat16) and spec.fp16_variant else None
    unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
    out = {"unet": sum(safetensors_bytes(f, dtype) for f in weight_files(unet_dir, variant))}
    part_variant = "fp16" if dtype in (torch.float16, torch.bfloat16) and parts_spec.fp16_variant else None
    for part in PARTS:
        out[part] = sum(safetensors_bytes(f, dtype) for f in weight_files(parts_folder / part, part_variant))
    return out


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def bench_memory(models: list[str], runtime: Runtime | None = None, *, log=None) -> dict:
    """Shared load vs the three UNets plus one text-encoder/VAE set (files) vs the models loaded separately."""
    runtime = runtime or choose_runtime()
    log = log or (lambda *_: None)
    before = environment(runtime.device)
    files = {m: file_bytes(m, runtime.dtype) for m in models}
    rss0 = _rss()
    cache = ModelCache(budget_bytes=1 << 50, runtime=runtime)
    for m in models:
        cache.get(m)
        log(f"loaded {m}: {cache.memory_bytes() / 2**20:.1f} MiB resident so far")
    pipes = [cache.get(m) for m in models]
    modules = {id(c): c for p in pipes for c in p.components.values() if isinstance(c, torch.nn.Module)}
    shared = {"bytes": cache.memory_bytes(), "storage_bytes": storage_bytes(modules.values()),
              "rss_added_bytes": _rss() - rss0,
              "text_encoder_vae_sets": len({tuple(id(getattr(p, c)) for c in PARTS) for p in pipes}),
              "per_model_bytes": {m: cache.model_bytes(m) for m in models}}
    del cache, pipes, modules
    free_memory(runtime.device)
    separate = {}
    for m in models:
        alone = ModelCache(budget_bytes=1 << 50, runtime=runtime)
        alone.get(m)
        separate[m] = alone.memory_bytes()
        log(f"{m} alone: {separate[m] / 2**20:.1f} MiB")
        del alone
        free_memory(runtime.device)
    first = files[models[0]]
    ideal = sum(f["unet"] for f in files.values()) + sum(first[p] for p in PARTS)
    return {
        "models": list(models), "dtype": str(runtime.dtype).replace("torch.", ""), "device": str(runtime.device),
        "files": files, "ideal_bytes": ideal, "shared": shared, "separate_bytes": separate,
        "separate_total_bytes": sum(separate.values()),
        "ratio_shared_to_ideal": shared["bytes"] / ideal,
        "ratio_storage_to_ideal": shared["storage_bytes"] / ideal,
        "ratio_separate_to_shared": sum(separate.values()) / shared["bytes"],
        "environment_before": before, "environment_after": environment(runtime.device),
    }


def bench_side_by_side(models: list[str], request: GenerateRequest, runtime: Runtime | None = None, *,
                       repeats: int = 5, warmup: int = 1, log=None) -> dict:
    """Median wall time of a three-model ``iter_side_by_side`` run vs the sum of the single-model runs' medians."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}")
    runtime = runtime or choose_runtime()
    log = log or (lambda *_: None)
    request = replace(request, seed=0 if request.seed == -1 else request.seed)
    cache = ModelCache(budget_bytes=1 << 50, runtime=runtime)
    together = "+".join(models)
    candidates = [together, *models]
    times = {c: [] for c in candidates}
    before = environment(runtime.device)
    for i in range(warmup + repeats):
        for cand in rotated(candidates, i):
            chosen = models if cand == together else [cand]
            start = time.perf_counter()
            results = list(iter_side_by_side(cache, chosen, request))
            elapsed = time.perf_counter() - start
            failed = [r for r in results if r.error]
            if failed:
                raise RuntimeError(f"side-by-side bench: {failed[0].model} failed: {failed[0].error}")
            if i >= warmup:
                times[cand].append(elapsed)
            log(f"{'warm-up' if i < warmup else f'repeat {i - warmup + 1}/{repeats}'} {cand}: {elapsed:.3f} s")
    stats = {c: summary(t) for c, t in times.items()}
    singles = sum(stats[m]["median_s"] for m in models)
    paired = [times[together][k] / sum(times[m][k] for m in models) for k in range(repeats)]
    return {
        "models": list(models), "request": request.to_dict(), "dtype": str(runtime.dtype).replace("torch.", ""),
        "device": str(runtime.device), "repeats": repeats, "warmup": warmup, "times": stats,
        "sum_of_single_medians_s": singles, "ratio": stats[together]["median_s"] / singles,
        "paired_ratio": summary(paired),
        "environment_before": before, "environment_after": environment(runtime.device),
    }


# ---------------------------------------------------------------------------------------------- real shapes

def real_cache(workdir: str | Path, dtype: str, configs: Path = CONFIGS_DIR, log=print) -> Path:
    """The offline hub cache of SDXL, SSD-1B and Vega (``configs``: the released ones) with random weights for
    ``dtype`` under ``workdir``, built once (``studio.smoke.build_cache``; a marker file records what was built)."""
    from studio.smoke import DTYPES, build_cache

    hub = Path(workdir) / "hub"
    mark = Path(workdir) / BUILT_MARK
    want = {"models": list(REAL_FAMILY), "dtype": dtype, "configs": str(Path(configs).resolve())}
    if mark.is_file() and json.loads(mark.read_text()) == want:
        return hub
    if hub.exists():
        shutil.rmtree(hub)
    hub.mkdir(parents=True)
    start = time.perf_counter()
    build_cache(hub, list(REAL_FAMILY), DTYPES[dtype], configs=Path(configs))
    mark.write_text(json.dumps(want))
    log(f"built SDXL, SSD-1B and Vega ({dtype} files, random weights) in {time.perf_counter() - start:.0f} s "
        f"under {hub}")
    return hub


def run_real(kind: str, workdir: str | Path, dtype: str, extra: list[str], *, configs: Path = CONFIGS_DIR,
             log=print) -> dict:
    """Measure ``kind`` ("memory" or "side-by-side") on the real shapes in a child process reading the cache."""
    hub = real_cache(workdir, dtype, configs, log)
    out = Path(workdir) / f"{kind}.json"
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "studio.bench.family", kind, "--dtype", dtype, "--out", str(out),
                           *extra], env=env, stdout=sys.stderr, check=False)
    if done.returncode:
        raise RuntimeError(f"bench {kind} --real: the measuring process failed (exit {done.returncode}); see above")
    return json.loads(out.read_text())


def _main(argv: list[str]) -> int:
    """The child process: ``memory|side-by-side --dtype D --out FILE [--size N --steps N --repeats N]``."""
    from studio.smoke import DTYPES

    parser = argparse.ArgumentParser(prog="python -m studio.bench.family")
    parser.add_argument("kind", choices=("memory", "side-by-side"))
    parser.add_argument("--dtype", choices=sorted(DTYPES), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runtime = Runtime(device, DTYPES[args.dtype])
    def log(line: str) -> None:
        print(line, file=sys.stderr)
    if args.kind == "memory":
        report = bench_memory(list(REAL_FAMILY), runtime, log=log)
    else:
        request = GenerateRequest(prompt="an astronaut riding a horse on the moon", seed=0, steps=args.steps,
                                  width=args.size, height=args.size)
        report = bench_side_by_side(list(REAL_FAMILY), request, runtime, repeats=args.repeats, warmup=args.warmup,
                                    log=log)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
