"""Proof on the real shapes without a GPU or a hub: SDXL, SSD-1B and Vega rebuilt from their released configs with
random weights, laid out as an offline Hugging Face cache like the real repos, loaded through the normal model layer
and run through the full pipeline for a step or two.

    python -m studio smoke --model vega --dtype bf16 --size 256
    python -m studio smoke --model sdxl --model ssd-1b --model vega --json

Three processes per model, so that memory is measured clean: one builds the cache (``assets/configs/<model>/``,
weights written one tensor at a time), one per model loads it with ``HF_HUB_CACHE`` pointing at it and
``HF_HUB_OFFLINE=1`` (exactly what a user with a downloaded cache has) and reports parameters, resident bytes, the
UNets held in memory, RSS and times.

What is real: every config (UNet, both text encoders, VAE, scheduler, model_index), every tensor shape and file
name (fp16 variant files as published), the repo ids and the cache layout, the loading and generation code path.
What is not: the weights (random, variance-preserving), and the tokenizers' vocabulary — CLIP's BPE files cannot be
downloaded here, so each tokenizer gets a synthetic byte-level BPE with CLIP's vocabulary size (49,408 entries) and
length (77), which proves the shapes, not the text understanding. Files the run must not read (the other precision's
files, the UNet of SDXL when a student runs) are written as sparse placeholders of their real size.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from studio.hubcache import add_repo, write_safetensors
from studio.registry import CONFIGS_DIR, get_spec

SMOKE_MODELS = ("sdxl", "ssd-1b", "vega")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHT_FILES = {"text_encoder": "model", "text_encoder_2": "model", "vae": "diffusion_pytorch_model",
                "unet": "diffusion_pytorch_model"}
PROMPT = "an astronaut riding a horse on the moon"
VOCAB_SIZE = 49408


# ---------------------------------------------------------------------------------------------- building the cache

def _meta_module(component: str, folder: Path) -> torch.nn.Module:
    """The component built from its config on the meta device (shapes only, no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        if component == "unet":
            return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder))
        if component == "vae":
            return AutoencoderKL.from_config(AutoencoderKL.load_config(folder))
        cls = CLIPTextModel if component == "text_encoder" else CLIPTextModelWithProjection
        return cls(CLIPTextConfig.from_pretrained(folder))


def random_tensor(name: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Variance-preserving random weights: matrices/kernels ~ N(0, 1/fan_in), norm scales 1, biases 0."""
    if like.dim() >= 2:
        return torch.randn(like.shape, generator=generator) * like[0].numel() ** -0.5
    return torch.ones(like.shape) if name.endswith("weight") else torch.zeros(like.shape)


def write_component(folder: Path, component: str, config_dir: Path, *, read_variant: str | None, real: bool,
                    seed: int) -> None:
    """config.json plus both weight files, the plain (fp32) one and the fp16 variant, as the released repos have
    them: the file a run reads (``read_variant``) has random weights when ``real``; the other is a sparse
    placeholder of its real size."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in config_dir.glob("*.json"):
        (folder / file.name).write_bytes(file.read_bytes())
    state = _meta_module(component, folder).state_dict()
    generator = torch.Generator().manual_seed(seed)
    for variant, dtype in ((None, torch.float32), ("fp16", torch.float16)):
        name = WEIGHT_FILES[component] + (f".{variant}" if variant else "") + ".safetensors"
        written = real and variant == read_variant
        write_safetensors(folder / name, state, dtype=dtype, placeholder=not written,
                          fill=lambda key, like: random_tensor(key, like, generator))


def write_tokenizer(folder: Path, config_dir: Path) -> None:
    """tokenizer_config.json / special_tokens_map.json as released, plus a synthetic CLIP-layout BPE vocabulary of
    CLIP's size: 256 byte symbols, the same with the end-of-word mark, byte-pair merges, the two special tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    for file in config_dir.glob("*.json"):
        (folder / file.name).write_bytes(file.read_bytes())
    symbols = list(bytes_to_unicode().values())
    words = [s + "</w>" for s in symbols]
    n_merges = VOCAB_SIZE - 2 * len(symbols) - 2
    merges = [(a, b) for a in symbols for b in words][:n_merges]
    vocab = symbols + words + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")


def build_cache(hub_dir: str | Path, models: list[str], dtype: torch.dtype, *, configs: Path = CONFIGS_DIR,
                seed: int = 0) -> dict[str, Path]:
    """Write the hub repos ``models`` need (SDXL always: the students' text encoders and VAE come from it) into
    ``hub_dir``; returns {model: snapshot folder}. Weights: random for what a run of ``models`` in ``dtype`` reads,
    sparse placeholders for the rest."""
    variant = "fp16" if dtype in (torch.float16, torch.bfloat16) else None
    snapshots = {}
    for k, model in enumerate(dict.fromkeys(["sdxl", *models])):
        spec = get_spec(model)
        with tempfile.TemporaryDirectory(dir=hub_dir) as tmp:
            repo = Path(tmp)
            source = configs / model
            (repo / "model_index.json").write_bytes((source / "model_index.json").read_bytes())
            for component in ("text_encoder", "text_encoder_2", "vae", "unet"):
                real = (component == "unet" and model in models) or (component != "unet" and model == "sdxl")
                write_component(repo / component, component, source / component, read_variant=variant, real=real,
                                seed=seed + 10 * k + len(component))
            for tok in ("tokenizer", "tokenizer_2"):
                write_tokenizer(repo / tok, source / tok)
            (repo / "scheduler").mkdir()
            (repo / "scheduler" / "scheduler_config.json").write_bytes(
                (source / "scheduler" / "scheduler_config.json").read_bytes())
            snapshots[model] = add_repo(hub_dir, spec.source, repo)
    return snapshots


# ---------------------------------------------------------------------------------------------- measuring a model

def measure(model: str, dtype: torch.dtype, *, size: int = 256, steps: int = 2, device: str | None = None) -> dict:
    """Load ``model`` through ModelCache (registry name -> hub id -> the HF cache) and run the full pipeline once.
    Run in a fresh process whose HF_HUB_CACHE points at the smoke cache (``python -m studio smoke`` does)."""
    import psutil
    from diffusers import UNet2DConditionModel

    from studio.compare import run_model
    from studio.generation import GenerateRequest
    from studio.loading import ModelCache, Runtime
    from studio.memory import PeakMemory, module_bytes

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    process = psutil.Process()
    cache = ModelCache(budget_bytes=1 << 50, runtime=Runtime(target, dtype))
    rss_before = process.memory_info().rss
    start = time.perf_counter()
    with PeakMemory(target) as load_peak:
        pipe = cache.get(model)
    load_s = time.perf_counter() - start
    gc.collect()
    parts = {c: getattr(pipe, c) for c in ("unet", "text_encoder", "text_encoder_2", "vae")}
    params = {c: sum(p.numel() for p in m.parameters()) for c, m in parts.items()}
    with warnings.catch_warnings():  # isinstance over every live object touches deprecated torch aliases
        warnings.simplefilter("ignore")
        unets = sorted(sum(p.numel() for p in m.parameters()) for m in gc.get_objects()
                       if isinstance(m, UNet2DConditionModel))
    request = GenerateRequest(prompt=PROMPT, seed=0, steps=steps, width=size, height=size, guidance=5.0)
    result = run_model(cache, cache.spec(model), request, warmup=False)
    image = np.asarray(result.images[0], dtype=np.float32)
    return {
        "model": model, "repo": get_spec(model).source, "dtype": str(dtype).replace("torch.", ""),
        "device": str(target), "size": size, "steps": steps,
        "params": {**params, "total": sum(params.values())},
        "resident_bytes": cache.memory_bytes(),
        "component_bytes": {c: module_bytes([m]) for c, m in parts.items()},
        "unets_in_memory": unets,
        "rss_added_by_load_bytes": process.memory_info().rss - rss_before if target.type == "cpu" else None,
        "load_peak_added_bytes": load_peak.added_bytes,
        "load_s": round(load_s, 2), "generate_s": round(result.stats.latency_s, 2),
        "generate_peak_added_bytes": int(result.stats.peak_added_mb * 2**20),
        "image_std": round(float(image.std()), 2),  # 0 for a black (NaN) or flat image
    }


# ---------------------------------------------------------------------------------------------- the command

def run_smoke(models: list[str], dtype: str, *, size: int = 256, steps: int = 2, device: str | None = None,
              workdir: str | None = None, keep: bool = False, log=print) -> list[dict]:
    """Build the cache in one process, measure each model in its own; returns one report per model."""
    for model in models:
        if model not in SMOKE_MODELS:
            raise ValueError(f"smoke --model must be one of {', '.join(SMOKE_MODELS)}; got {model!r}")
    if dtype not in DTYPES:
        raise ValueError(f"smoke --dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if size % 64 or not 64 <= size <= 2048 or not 1 <= steps <= 50:
        raise ValueError(f"smoke --size must be a multiple of 64 in 64-2048 and --steps 1-50; got {size}, {steps}")
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="studio-smoke-"))
    hub = root / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    try:
        start = time.perf_counter()
        _child(["build", "--hub", str(hub), "--dtype", dtype, *models], env)
        log(f"built {', '.join(models)} ({dtype} files) in {time.perf_counter() - start:.0f} s under {hub}")
        reports = []
        for model in models:
            out = root / f"{model}.json"
            args = ["measure", model, "--dtype", dtype, "--size", str(size), "--steps", str(steps), "--out", str(out)]
            _child(args + (["--device", device] if device else []), env)
            reports.append(json.loads(out.read_text()))
            log(format_report(reports[-1]))
        return reports
    finally:
        if not keep and not workdir:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def _child(args: list[str], env: dict) -> None:
    done = subprocess.run([sys.executable, "-m", "studio.smoke", *args], env=env, stdout=sys.stderr)  # (--json)
    if done.returncode:
        raise RuntimeError(f"smoke step `{' '.join(args[:2])}` failed (exit {done.returncode}); see the output above")


def format_report(r: dict) -> str:
    gb = 2**30
    own = r["component_bytes"]
    return (f"{r['model']} ({r['repo']}), {r['dtype']} on {r['device']}: UNet {r['params']['unet']:,} params, "
            f"pipeline {r['params']['total']:,}; resident {r['resident_bytes'] / gb:.2f} GiB = UNet "
            f"{own['unet'] / gb:.2f} + text encoders {(own['text_encoder'] + own['text_encoder_2']) / gb:.2f} + VAE "
            f"{own['vae'] / gb:.2f}; UNets in memory: {', '.join(f'{n:,}' for n in r['unets_in_memory'])}; "
            f"load {r['load_s']} s, {r['steps']} steps at {r['size']}² {r['generate_s']} s")


def cmd_smoke(args) -> int:
    reports = run_smoke(args.model or list(SMOKE_MODELS), args.dtype, size=args.size, steps=args.steps,
                        device=args.device, workdir=args.workdir, keep=args.keep,
                        log=(lambda *_: None) if args.json else print)
    if args.json:
        print(json.dumps(reports, indent=2))
    return 0


def register(subparsers) -> None:
    smoke = subparsers.add_parser("smoke", help="SDXL / SSD-1B / Vega on their real shapes with random weights, "
                                                "through an offline hub cache (no download)")
    smoke.add_argument("--model", action="append", choices=SMOKE_MODELS, help="repeatable (default: all three)")
    smoke.add_argument("--dtype", choices=sorted(DTYPES), default="fp16" if torch.cuda.is_available() else "bf16",
                       help="bf16 loads the fp16 files and casts (default: fp16 on CUDA, bf16 on a CPU)")
    smoke.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 64)")
    smoke.add_argument("--steps", type=int, default=2)
    smoke.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when present")
    smoke.add_argument("--workdir", help="where to build the cache (kept); default: a temporary folder")
    smoke.add_argument("--keep", action="store_true", help="keep the temporary cache (its path is printed)")
    smoke.add_argument("--json", action="store_true")
    smoke.set_defaults(func=cmd_smoke)


def _main(argv: list[str]) -> int:
    """The child processes: ``build --hub DIR --dtype D MODEL...`` and ``measure MODEL --dtype D ... --out FILE``."""
    parser = argparse.ArgumentParser(prog="python -m studio.smoke")
    sub = parser.add_subparsers(dest="step", required=True)
    build = sub.add_parser("build")
    build.add_argument("--hub", required=True)
    build.add_argument("--dtype", choices=sorted(DTYPES), required=True)
    build.add_argument("models", nargs="+")
    run = sub.add_parser("measure")
    run.add_argument("model")
    run.add_argument("--dtype", choices=sorted(DTYPES), required=True)
    run.add_argument("--size", type=int, default=256)
    run.add_argument("--steps", type=int, default=2)
    run.add_argument("--device")
    run.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.step == "build":
        build_cache(args.hub, args.models, DTYPES[args.dtype])
    else:
        report = measure(args.model, DTYPES[args.dtype], size=args.size, steps=args.steps, device=args.device)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
