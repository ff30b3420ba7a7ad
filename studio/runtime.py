"""Where and in what precision the studio runs (``choose_runtime``: CUDA fp16/bf16 or CPU fp32) and how many bytes
its model cache may fill (``default_budget``); both read their environment variables (STUDIO_DTYPE,
STUDIO_GPU_MEMORY_GB, STUDIO_CACHE_GB)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import psutil
import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype

    @property
    def variant(self) -> str | None:
        """Hub repos publish half-precision weights as the "fp16" variant; bf16 loads those and casts (half the
        download of the fp32 files, same values up to bf16 rounding)."""
        return "fp16" if self.dtype in (torch.float16, torch.bfloat16) else None


def choose_runtime() -> Runtime:
    """CUDA with fp16 (bf16 with STUDIO_DTYPE=bf16) when a GPU is present, else CPU with fp32.

    STUDIO_GPU_MEMORY_GB caps what this process may allocate on the GPU (room for a training job, or to behave like
    a smaller card); allocations beyond it raise CUDA out-of-memory like a full card would.
    """
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if os.environ.get("STUDIO_DTYPE") == "bf16" else torch.float16
        if os.environ.get("STUDIO_GPU_MEMORY_GB"):
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, float(os.environ["STUDIO_GPU_MEMORY_GB"]) * 2**30 / total))
        return Runtime(torch.device("cuda"), dtype)
    return Runtime(torch.device("cpu"), torch.float32)


def default_budget(runtime: Runtime) -> int:
    """Bytes the cache may fill with weights and a request's working memory: STUDIO_CACHE_GB, else 92 % of the GPU
    memory this process may use (the rest: CUDA context, fragmentation), or half the RAM on a CPU."""
    if "STUDIO_CACHE_GB" in os.environ:
        return int(float(os.environ["STUDIO_CACHE_GB"]) * 2**30)
    if runtime.device.type == "cuda":
        gb = os.environ.get("STUDIO_GPU_MEMORY_GB")
        total = int(float(gb) * 2**30) if gb else torch.cuda.get_device_properties(0).total_memory
        return int(total * 0.92)
    return int(psutil.virtual_memory().total * 0.5)
