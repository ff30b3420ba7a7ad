"""Memory accounting for the model layer: bytes of weights (resident or still on disk), the working memory a
request needs, and the peak a call adds.

    weights = module_bytes([pipe.unet, pipe.vae])                # resident, each tensor counted once
    on_disk = safetensors_bytes("unet/diffusion_pytorch_model.fp16.safetensors", torch.bfloat16)  # header only
    with PeakMemory(torch.device("cpu")) as peak:
        pipe(prompt)
    print(peak.added_bytes)

On CUDA the peak is the allocator's (``max_memory_allocated`` over the call, minus what was allocated before); on a
CPU it is the process RSS, sampled by a thread every 10 ms (the VAE decode happens between step callbacks). Freed
heap that the C allocator still holds would hide a call's memory from the RSS (the call reuses it without the RSS
moving), so on glibc the measurement starts by handing free heap pages back to the system (``malloc_trim``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
from pathlib import Path

import psutil
import torch
from safetensors import safe_open

# Working memory of one SDXL-family call beyond its weights, per output pixel and image, at 2 bytes per element with
# classifier-free guidance (UNet at batch 2): ~3 GiB at 1024² — the fp16 peaks published for SDXL with SDPA
# (9.0 GB) less its weights (~6.9 GB), plus the full-size VAE decode. An estimate used to keep headroom when loading.
ACTIVATION_BYTES_PER_PIXEL = 3 * 2**30 // (1024 * 1024)


def module_bytes(modules) -> int:
    """Bytes of the parameters and buffers of ``modules``, each tensor counted once (shared modules too)."""
    seen, total = set(), 0
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def safetensors_bytes(path: str | Path, dtype: torch.dtype | None = None) -> int:
    """Bytes the tensors of a .safetensors file take once loaded (cast to ``dtype`` when given; floating tensors
    only), read from its header without touching the weights."""
    size = torch.tensor([], dtype=dtype).element_size() if dtype is not None else None
    total = 0
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            piece = fh.get_slice(key)
            numel = 1
            for n in piece.get_shape():
                numel *= n
            stored = _DTYPE_BYTES.get(piece.get_dtype(), 4)
            floating = piece.get_dtype() in ("F16", "BF16", "F32", "F64")
            total += numel * (size if size is not None and floating else stored)
    return total


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}


def activation_bytes(width: int, height: int, batch: int, dtype: torch.dtype, *, cfg: bool = True) -> int:
    """Estimated working memory of one call (see ACTIVATION_BYTES_PER_PIXEL): linear in pixels × images."""
    element = torch.tensor([], dtype=dtype).element_size()
    per_pixel = ACTIVATION_BYTES_PER_PIXEL * element // 2
    return int(width * height * batch * per_pixel * (1.0 if cfg else 0.6))


def _load_malloc_trim():
    """glibc's ``malloc_trim`` (None where the C library has none, e.g. macOS or musl)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_MALLOC_TRIM = _load_malloc_trim()


def free_memory(device: torch.device) -> None:
    """Return freed tensors to the system (Python garbage first, then the CUDA caching allocator)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class PeakMemory:
    """Context manager: ``added_bytes`` = peak memory during the block minus the memory in use when it started."""

    def __init__(self, device: torch.device, interval_s: float = 0.01):
        self.device, self.interval_s = device, interval_s
        self.added_bytes = 0
        self.kind = "cuda peak" if device.type == "cuda" else "process RSS"
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            if _MALLOC_TRIM is not None:  # under a millisecond (a gc.collect() here cost 200 ms)
                _MALLOC_TRIM(0)  # freed heap back to the system, so what the call touches shows in the RSS
            self._process = psutil.Process()
            self._start = self._peak = self._process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._process.memory_info().rss)
        self.added_bytes = max(0, peak - self._start)
