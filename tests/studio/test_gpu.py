"""Opt-in CUDA checks (skipped without a GPU): fp16 loading, CUDA peak memory, seed determinism on the device."""
import numpy as np
import pytest
import torch

from studio.generation import GenerateRequest, generate
from studio.loading import ModelCache, choose_runtime

pytestmark = pytest.mark.gpu


def test_cuda_runtime_loads_fp16_and_reports_cuda_peak(family):
    runtime = choose_runtime()
    assert runtime.device.type == "cuda" and runtime.dtype in (torch.float16, torch.bfloat16)
    cache = ModelCache(runtime=runtime)
    base, student = cache.get("tiny-base"), cache.get("tiny-student")
    assert base.unet.dtype == runtime.dtype and student.vae is base.vae
    req = GenerateRequest(prompt="a red circle", seed=4, steps=3)
    a, b = generate(student, req), generate(student, req)
    assert a.stats.memory_kind == "cuda peak" and a.stats.peak_added_mb > 0
    assert a.stats.weights_mb * 2**20 <= torch.cuda.memory_allocated()  # resident on the device
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
