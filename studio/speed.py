"""Speed options for one generation, applied to the shared cached modules for that call only and undone afterwards
(the cached pipeline leaves each call exactly as it entered it: same modules, same weight storage, same attention
processors, no instance attributes left behind), plus ``torch.compile`` as a mode of the model cache.

    with options_applied([pipe.unet, pipe.vae], attention="sdpa", channels_last=True, fuse_qkv=True):
        pipe(prompt)
    compile_unet(pipe.unet, "regional", memo)       # the cache's compile mode; compile_unet(unet, "off", memo) undoes it

What each does (measured by ``python -m studio bench options``; numbers in README "Speed" and assets/bench/):

- ``attention``: "sdpa" (default: diffusers' ``AttnProcessor2_0``, PyTorch's fused scaled-dot-product attention) or
  "classic" (``AttnProcessor``: explicit QKᵀ, softmax, ·V — slower, for comparison and old backends).
- ``channels_last``: the UNet's and VAE's convolution weights in NHWC for the call (the layout GPU tensor cores and
  oneDNN prefer); the original weight tensors are put back afterwards.
- ``fuse_qkv``: diffusers' ``fuse_qkv_projections``: one matmul for Q, K and V of self-attention (K and V of
  cross-attention) in the UNet and VAE; the fused copies are deleted afterwards. Not with LoRAs (the fused
  projection would drop their Q/K/V deltas).
- ``vae_decode``: "auto" (default: one image at a time for batches, tiles above ``TILE_ABOVE_PIXELS``), "full" (never
  sliced or tiled: fastest, most memory), "sliced", "tiled" (``AutoencoderKL`` tiling: lowest peak memory; it only
  tiles latents larger than the VAE's tile, 1024² for SDXL).
- compile (the cache's mode, not a request field: compiled code is kept between calls): "off", "regional" (diffusers'
  ``compile_repeated_blocks``: each transformer layer, compiled once per shape, short compile) or "full" (the whole
  UNet). Feature reuse (``studio.reuse``) patches modules outside the compiled transformer layers, so it combines with
  "regional"; with "full" its two kinds of steps are two compiled variants.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

ATTENTION = ("sdpa", "classic")
VAE_DECODE = ("auto", "full", "sliced", "tiled")
COMPILE = ("off", "regional", "full")


def check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of: {', '.join(allowed)}; got {value!r}")


def check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}")


def _attention_models(modules) -> list:
    return [m for m in modules if hasattr(m, "attn_processors") and m.attn_processors]


@contextmanager
def attention_applied(modules, kind: str):
    """``kind`` attention in every diffusers model among ``modules`` for the block; the processors put back after."""
    check_choice("attention", kind, ATTENTION)
    models = _attention_models(modules) if kind != "sdpa" else []
    saved = [(m, dict(m.attn_processors)) for m in models]
    try:
        for m in models:
            m.set_attn_processor(AttnProcessor())
        yield
    finally:
        for m, processors in saved:
            m.set_attn_processor(processors)


@contextmanager
def channels_last_applied(modules, on: bool):
    """Convolution weights of ``modules`` in channels-last layout for the block; the original tensors after."""
    saved = []
    try:
        if on:
            with torch.no_grad():
                for module in modules:
                    for conv in (m for m in module.modules() if isinstance(m, torch.nn.Conv2d)):
                        saved.append((conv.weight, conv.weight.data))
                        conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for param, data in saved:
            param.data = data


@contextmanager
def fused_qkv_applied(modules, on: bool):
    """diffusers' fused QKV projections in every model among ``modules`` for the block; afterwards the fused
    layers are deleted and the processors and flags are as before."""
    models = _attention_models(modules) if on else []
    saved = []
    try:
        for m in models:
            layers = [a for a in m.modules() if isinstance(a, Attention)]
            saved.append((m, dict(m.attn_processors), "original_attn_processors" in m.__dict__,
                          [(a, a.fused_projections, set(a._modules)) for a in layers]))
            with torch.no_grad():
                m.fuse_qkv_projections()
        yield
    finally:
        for m, processors, had_original, layers in saved:
            m.set_attn_processor(processors)
            if not had_original:
                m.__dict__.pop("original_attn_processors", None)
            for layer, fused, children in layers:
                for name in set(layer._modules) - children:
                    delattr(layer, name)
                layer.fused_projections = fused


@contextmanager
def options_applied(modules, *, attention: str = "sdpa", channels_last: bool = False, fuse_qkv: bool = False):
    """The per-call options together, undone in reverse order."""
    with ExitStack() as stack:
        stack.enter_context(attention_applied(modules, attention))
        stack.enter_context(fused_qkv_applied(modules, fuse_qkv))
        stack.enter_context(channels_last_applied(modules, channels_last))
        yield


def compile_unet(unet, mode: str, memo: dict) -> None:
    """Put ``unet`` in compile ``mode``. Compiled callables are kept in ``memo`` (one per mode), so switching back
    to a mode compiled before costs nothing; torch compiles lazily, on the first call in a mode (and again for a
    new input shape or a changed module, e.g. another attention processor)."""
    check_choice("compile", mode, COMPILE)
    for module in unet.modules():  # off: the class attribute (None) shows through again
        module.__dict__.pop("_compiled_call_impl", None)
    if mode == "off":
        return
    if mode not in memo:
        if mode == "regional":
            unet.compile_repeated_blocks()  # diffusers: every module of a class in unet._repeated_blocks
        else:
            unet.compile()
        memo[mode] = [(m, m.__dict__["_compiled_call_impl"]) for m in unet.modules()
                      if "_compiled_call_impl" in m.__dict__]
        return
    for module, compiled in memo[mode]:
        module._compiled_call_impl = compiled
