"""UNet forward latency of the real SDXL, SSD-1B and Vega architectures, side by side, with no download.

    python -m studio bench unet --resolution 256 --threads 2 --json

The UNets are built from the released configs (``assets/configs/<model>/unet/config.json``) with random weights:
speed does not depend on the values, only on shapes, dtype and device. Storage is shared: every layer SSD-1B and Vega
keep has the same shape as the SDXL layer it came from (the recipes' name maps, ``studio.removal.name_map``), so the
students' parameters are views of SDXL's tensors — one SDXL-sized allocation for all three (10.3 GB in fp32, half in
bf16/fp16) instead of 18.9 GB. Each forward is one denoising step of one image (``--batch 2`` = with CFG) at
``resolution``² pixels (latent side = resolution / 8), timed after a warm-up, the three models taking turns in a
rotating order within each repeat; ratios are this run's medians divided by SDXL's. MACs (meta device,
``studio.blocks.measure_macs``) are reported beside them: the ratio latency would have if it tracked compute exactly.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from studio.bench.stats import environment, rotated, storage_bytes, summary
from studio.blocks import measure_macs
from studio.recipes import recipe_plan
from studio.registry import CONFIGS_DIR
from studio.removal import map_key, name_map

TEACHER = "sdxl"
STUDENTS = ("ssd-1b", "vega")  # each is the recipe of the same name applied to the teacher
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_TOKENS = 77


def random_weights(config: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Variance-preserving random tensors for every entry of the UNet's state dict: matrices and kernels
    N(0, 1/fan_in), norm scales 1, biases 0 (no denormals or overflow to skew the timing)."""
    with torch.device("meta"):
        shapes = UNet2DConditionModel.from_config(config).state_dict()
    generator = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, like in shapes.items():
        if like.dim() >= 2:
            t = torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)
            out[name] = t.mul_(like[0].numel() ** -0.5).to(dtype)
        else:
            fill = torch.ones if name.endswith("weight") else torch.zeros
            out[name] = fill(like.shape, device=device, dtype=dtype)
    return out


def family_unets(configs: dict[str, dict], dtype: torch.dtype, device: torch.device) -> dict[str, torch.nn.Module]:
    """The teacher with random weights and the students as views of its tensors. ``configs`` maps "sdxl",
    "ssd-1b" and "vega" to UNet configs; a student config must be its recipe applied to the teacher's."""
    teacher_cfg = configs[TEACHER]
    weights = random_weights(teacher_cfg, dtype, device)
    unets = {}
    for name, cfg in configs.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(cfg)
        if name == TEACHER:
            state = weights
        else:
            names = name_map(teacher_cfg, recipe_plan(name, teacher_cfg))
            state = {}
            for key, like in unet.state_dict().items():
                source = weights[map_key(key, names)]
                if source.shape != like.shape:
                    raise ValueError(f"{name}: {key} {tuple(like.shape)} has no same-shape teacher layer "
                                     f"({map_key(key, names)} {tuple(source.shape)}); is its config the recipe's?")
                state[key] = source
        unet.load_state_dict(state, strict=True, assign=True)
        unets[name] = unet.eval()
    return unets


def unet_inputs(config: dict, resolution: int, batch: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """(args, kwargs) of one SDXL-style UNet forward at ``resolution``² pixels: noisy latents, a timestep, the two
    text encoders' hidden states, pooled text embedding and size conditioning."""
    generator = torch.Generator(device=device).manual_seed(1)
    latent = resolution // 8
    cross = config["cross_attention_dim"]
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]

    def randn(*shape):
        return torch.randn(shape, generator=generator, device=device).to(dtype)

    sample = randn(batch, config["in_channels"], latent, latent)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch, device=device).to(dtype)
    kwargs = {"encoder_hidden_states": randn(batch, TEXT_TOKENS, cross),
              "added_cond_kwargs": {"text_embeds": randn(batch, pooled), "time_ids": time_ids}, "return_dict": False}
    return (sample, torch.tensor([500.0], device=device)), kwargs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_unet(configs: dict[str, dict], *, resolution: int = 256, dtype: str = "fp32", device: str | None = None,
               batch: int = 1, repeats: int = 5, warmup: int = 1, threads: int | None = None, log=None) -> dict:
    """Median forward latency of each UNet and its ratio to the teacher's, from one interleaved run."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of: {', '.join(DTYPES)}; got {dtype!r}")
    if resolution % 64 or not 64 <= resolution <= 2048:
        raise ValueError(f"resolution must be a multiple of 64 from 64 to 2048; got {resolution}")
    if not 1 <= batch <= 8 or repeats < 1 or warmup < 0:
        raise ValueError(f"batch must be 1-8, repeats >= 1 and warmup >= 0; got {batch}, {repeats}, {warmup}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1; got {threads}")
        torch.set_num_threads(threads)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but no CUDA device is available")
    if TEACHER not in configs or not set(configs) <= {TEACHER, *STUDENTS}:
        raise ValueError(f"configs must name {TEACHER!r} and any of {STUDENTS}; got {sorted(configs)}")
    log = log or (lambda *_: None)
    start = time.perf_counter()
    unets = family_unets(configs, DTYPES[dtype], target)
    built_s = time.perf_counter() - start
    log(f"built {', '.join(unets)} ({dtype}, {target}) in {built_s:.0f} s; "
        f"{storage_bytes(unets.values()) / 2**30:.2f} GiB of weights for all of them")
    names = list(unets)
    before = environment(target)
    times = {n: [] for n in names}
    with torch.inference_mode():
        inputs = {n: unet_inputs(configs[n], resolution, batch, DTYPES[dtype], target) for n in names}
        for i in range(warmup + repeats):
            for name in rotated(names, i):
                args, kwargs = inputs[name]
                _sync(target)
                t0 = time.perf_counter()
                unets[name](*args, **kwargs)
                _sync(target)
                elapsed = time.perf_counter() - t0
                if i >= warmup:
                    times[name].append(elapsed)
                log(f"{'warm-up' if i < warmup else f'repeat {i - warmup + 1}/{repeats}'} {name}: {elapsed:.3f} s")
    after = environment(target)
    macs = {n: measure_macs(configs[n], latent=resolution // 8, text_tokens=TEXT_TOKENS)[""] * batch for n in names}
    models = {}
    for n in names:
        models[n] = {"params": sum(p.numel() for p in unets[n].parameters()), "macs": macs[n], **summary(times[n])}
    teacher = models[TEACHER]["median_s"]
    paired = {n: [s / t for s, t in zip(times[n], times[TEACHER])] for n in names}
    return {
        "resolution": resolution, "latent": resolution // 8, "dtype": dtype, "batch": batch, "device": str(target),
        "repeats": repeats, "warmup": warmup,
        "weights": "random (variance-preserving); the students' tensors are views of SDXL's (recipes' name maps): "
                   "one SDXL-sized allocation for all three",
        "weight_bytes_allocated": storage_bytes(unets.values()),
        "weight_bytes_if_separate": sum(storage_bytes([u]) for u in unets.values()),
        "models": models,
        "ratios": {n: models[n]["median_s"] / teacher for n in names},
        "paired_ratio_range": {n: [min(paired[n]), max(paired[n])] for n in names},
        "mac_ratios": {n: macs[n] / macs[TEACHER] for n in names},
        "environment_before": before, "environment_after": after, "build_s": built_s,
    }


def released_configs(folder: Path = CONFIGS_DIR) -> dict[str, dict]:
    """The UNet configs of SDXL, SSD-1B and Vega under ``folder`` (default: the committed released ones)."""
    out = {}
    for name in (TEACHER, *STUDENTS):
        file = Path(folder) / name / "unet" / "config.json"
        if not file.is_file():
            raise ValueError(f"no UNet config for {name} at {file}")
        out[name] = json.loads(file.read_text())
    return out


def format_unet(report: dict) -> str:
    lines = [f"UNet forward, {report['resolution']}² px (latent {report['latent']}²), batch {report['batch']}, "
             f"{report['dtype']} on {report['device']}, {report['environment_before']['torch_threads']} threads, "
             f"load {report['environment_before']['load_average'][0]} -> {report['environment_after']['load_average'][0]}",
             f"{'model':<8} {'params':>14} {'GMACs':>9} {'median s':>9} {'p25-p75 s':>15} {'ratio':>6} {'MAC ratio':>9}"]
    for name, m in report["models"].items():
        lines.append(f"{name:<8} {m['params']:>14,} {m['macs'] / 1e9:>9.1f} {m['median_s']:>9.3f} "
                     f"{m['p25_s']:>7.3f}-{m['p75_s']:<7.3f} {report['ratios'][name]:>6.3f} "
                     f"{report['mac_ratios'][name]:>9.3f}")
    return "\n".join(lines)
