"""Models a training run starts from: a fresh fp32 CPU pipeline for any registry name or local folder, and the CFG
scale it is used with.

    pipe = load_base("demo-ssd")                  # a UNet-only student gets its base's text encoders and VAE
    guidance = default_guidance("assets/demo/teacher")
    dtype = DTYPES[cfg.save_dtype]                # "fp16" -> torch.float16
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # config names -> torch dtypes


def frozen_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The dtype frozen modules (teachers, a LoRA's base) run in: the mixed-precision dtype on CUDA, else fp32."""
    low = DTYPES.get(mixed_precision)
    return low if low is not None and device.type == "cuda" else torch.float32


def load_base(name_or_path: str):
    """A fresh fp32 CPU StableDiffusionXLPipeline for ``name_or_path`` (UNet-only students get their base's parts)."""
    from diffusers import StableDiffusionXLPipeline

    from studio.loading import ModelCache, Runtime, resolve_spec
    from studio.registry import ModelSpec, _read_spec_file

    spec = resolve_spec(name_or_path)
    path = Path(name_or_path)
    if path.is_dir() and not (path / "model_index.json").exists() and _read_spec_file(path).get("base"):
        spec = ModelSpec(spec.name, spec.source, base=_read_spec_file(path)["base"])  # the folder names its base
    cache = ModelCache(budget_bytes=1 << 62, runtime=Runtime(torch.device("cpu"), torch.float32))
    pipe = cache.get(spec)
    pipe = StableDiffusionXLPipeline(**{k: v for k, v in pipe.components.items() if k in (
        "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def default_guidance(name_or_path: str | Path) -> float:
    """The CFG scale a model is meant for: a folder's ``studio_model.json`` (``default_guidance``) or a demo-family
    teacher's ``training_config.json`` (``guidance_scale``), else the registry's value, else 5.0."""
    folder = Path(name_or_path)
    if folder.is_dir():
        sources = (("studio_model.json", ("default_guidance",)), ("training_config.json", ("config", "guidance_scale")))
        for name, keys in sources:
            if (folder / name).is_file():
                value = json.loads((folder / name).read_text())
                for key in keys:
                    value = value.get(key, {}) if isinstance(value, dict) else {}
                if isinstance(value, (int, float)):
                    return float(value)
        return 5.0
    from studio.loading import resolve_spec

    try:
        return float(resolve_spec(str(name_or_path)).default_guidance)
    except ValueError:
        return 5.0
