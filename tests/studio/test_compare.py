"""Side by side: out-of-memory recovery (a real torch.OutOfMemoryError from inside the real pipeline), warm-up
excluded from the timing, per-model memory, one model's failure leaves the other columns, low VRAM, VAE choice."""
import time

import numpy as np
import pytest
import torch

from studio.compare import STATS_COLUMNS, WARMUP_STEPS, iter_side_by_side, stats_rows
from studio.generation import GenerateRequest
from studio.loading import ModelCache, ModelLoadError
from studio.memory import module_bytes
from studio.registry import ModelSpec, get_spec
from studio.hubcache import add_repo
from tests.conftest import make_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
REQUEST = GenerateRequest(prompt="a red circle", seed=3, steps=2)


def oom_hook(times: int):
    """A forward pre-hook that raises CUDA's out-of-memory error ``times`` times, as the allocator would."""
    left = [times]

    def hook(module, args):
        if left[0]:
            left[0] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (raised by the test)")
    return hook


def test_out_of_memory_evicts_the_others_and_retries_once(family):
    cache = ModelCache()
    base, student = cache.get("tiny-base"), cache.get("tiny-student")
    reference = list(iter_side_by_side(cache, ["tiny-student"], REQUEST, warmup=False))[0].images[0]
    handle = student.unet.register_forward_pre_hook(oom_hook(1))
    try:
        loaded_at_retry = []
        results = []
        for result in iter_side_by_side(cache, ["tiny-student", "tiny-base"], REQUEST, warmup=False):
            results.append(result)
            loaded_at_retry = loaded_at_retry or cache.loaded()
    finally:
        handle.remove()
    first, second = results
    assert not first.error and first.stats.retried and first.stats.vae_tiled
    assert loaded_at_retry == ["tiny-student"]  # the other model was evicted to make room
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(reference))
    assert not second.error and cache.get("tiny-base") is not base  # reloaded for its own column
    assert "retried after out-of-memory" in stats_rows(results)[0][STATS_COLUMNS.index("note")]


def test_out_of_memory_twice_is_a_clear_message_and_the_next_column_still_runs(family):
    cache = ModelCache()
    student = cache.get("tiny-student")
    handle = student.unet.register_forward_pre_hook(oom_hook(100))
    try:
        failed, ok = iter_side_by_side(cache, ["tiny-student", "tiny-base"], REQUEST, warmup=False)
    finally:
        handle.remove()
    assert failed.error.startswith("tiny-student ran out of memory") and "lower the size" in failed.error
    assert "low VRAM" in failed.error and failed.images == [] and failed.stats is None
    assert not ok.error and len(ok.images) == 1
    rows = stats_rows([failed, ok])
    assert rows[0][STATS_COLUMNS.index("note")] == "failed: out of memory"  # the whole message: failed.error
    assert rows[1][STATS_COLUMNS.index("speed-up vs first")] == 1.0  # relative to the first model that ran


def test_a_model_that_cannot_load_fails_alone(family, tmp_path):
    broken = ModelSpec("broken", str(tmp_path / "gone"), base="tiny-base")
    results = list(iter_side_by_side(ModelCache(), ["tiny-base", broken, "tiny-student"], REQUEST, warmup=False))
    assert [r.model for r in results] == ["tiny-base", "broken", "tiny-student"]
    assert "does not exist" in results[1].error and not results[0].error and not results[2].error
    assert results[1].save(tmp_path) == []
    with pytest.raises(ValueError, match="unknown model 'no-such'"):  # names resolve before anything runs
        next(iter_side_by_side(ModelCache(), ["tiny-base", "no-such"], REQUEST))


def test_first_call_after_loading_is_an_untimed_warm_up(family):
    cache = ModelCache()
    events = []

    def on_step(step, total, info):
        events.append((time.perf_counter(), info.get("phase", "timed"), step, total))

    request = GenerateRequest(prompt="a red circle", seed=3, steps=4)
    first = list(iter_side_by_side(cache, ["tiny-base"], request, on_step=on_step))[0]
    end = time.perf_counter()
    warm = [e for e in events if e[1] == "warm-up"]
    timed = [e for e in events if e[1] == "timed"]
    assert [(s, t) for _, _, s, t in warm] == [(i + 1, WARMUP_STEPS) for i in range(WARMUP_STEPS)]
    assert [(s, t) for _, _, s, t in timed] == [(i + 1, 4) for i in range(4)]
    window_start = end - first.stats.latency_s  # the timed window lies after the whole warm-up
    assert warm[-1][0] < window_start <= timed[0][0]
    assert first.stats.warmup_s is not None and first.stats.warmup_s > 0
    events.clear()
    again = list(iter_side_by_side(cache, ["tiny-base"], request, on_step=on_step))[0]
    assert again.stats.warmup_s is None and all(e[1] == "timed" for e in events)  # warm already
    assert stats_rows([first])[0][STATS_COLUMNS.index("warm-up (s)")] == round(first.stats.warmup_s, 3)


def test_image_to_image_warms_up_with_at_least_one_denoising_step(family):
    from PIL import Image

    request = GenerateRequest(prompt="a circle", seed=3, steps=4, strength=0.3, init_image=Image.new("RGB", (32, 32)))
    (result,) = iter_side_by_side(ModelCache(), ["tiny-base"], request)
    assert not result.error and result.stats.warmup_s > 0


def test_each_model_reports_its_own_memory(family):
    cache = ModelCache()
    base, student = iter_side_by_side(cache, ["tiny-base", "tiny-student"], REQUEST, warmup=False)
    for result in (base, student):
        pipe = cache.get(result.model)
        own = module_bytes([pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae])
        assert result.stats.weights_mb == own / 2**20
    assert cache.memory_bytes() > max(base.stats.weights_mb, student.stats.weights_mb) * 2**20  # both resident
    big_request = GenerateRequest(prompt="a red circle", seed=3, steps=1, width=256, height=256, batch_size=4)
    # The same call twice: the second reuses the heap the first freed, and must still show what it takes (on a CPU
    # the RSS only moves for it because the measurement hands freed heap back first; without that it read ~0 MB).
    first, big = (list(iter_side_by_side(cache, ["tiny-base"], big_request, warmup=False))[0] for _ in range(2))
    small = list(iter_side_by_side(cache, ["tiny-base"], GenerateRequest(
        prompt="a red circle", seed=3, steps=1), warmup=False))[0]
    assert first.stats.peak_added_mb > 8 and big.stats.peak_added_mb > 8
    assert big.stats.peak_added_mb > small.stats.peak_added_mb + 6
    assert small.stats.peak_added_mb < 4  # what the call added, not the process (hundreds of MB)


def test_low_vram_offload_gives_the_same_image_and_leaves_no_hooks(family):
    plain = list(iter_side_by_side(ModelCache(), ["tiny-student"], REQUEST, warmup=False))[0]
    cache = ModelCache(offload=True)
    result = list(iter_side_by_side(cache, ["tiny-student"], REQUEST, warmup=False))[0]
    assert result.stats.offloaded and "low VRAM" in stats_rows([result])[0][STATS_COLUMNS.index("note")]
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))
    pipe = cache.get("tiny-student")
    for module in (pipe.unet, pipe.text_encoder, pipe.vae):
        assert not hasattr(module, "_hf_hook") and module.device.type == "cpu"


def test_vae_choice_uses_the_replacement_vae_or_says_why_not(hub, family, tmp_path):
    request = GenerateRequest(prompt="a red circle", seed=3, steps=2, vae="fp16-fix")
    cache = ModelCache()
    missing = list(iter_side_by_side(cache, ["sdxl"], request, warmup=False))[0]
    assert "VAE 'fp16-fix' (madebyollin/sdxl-vae-fp16-fix) is not available" in missing.error
    folder = tmp_path / "fix"
    make_tiny_pipeline(seed=9).vae.save_pretrained(folder)  # same architecture, other weights
    add_repo(hub, "madebyollin/sdxl-vae-fp16-fix", folder)
    own = list(iter_side_by_side(cache, ["sdxl"], GenerateRequest(prompt="a red circle", seed=3, steps=2),
                                 warmup=False))[0]
    fixed = list(iter_side_by_side(cache, ["sdxl"], request, warmup=False))[0]
    assert not fixed.error and "VAE: fp16-fix" in fixed.parameters[0] and "VAE:" not in own.parameters[0]
    assert np.abs(np.asarray(fixed.images[0], dtype=int) - np.asarray(own.images[0], dtype=int)).mean() > 1
    assert cache.get("sdxl").vae is not cache.vae("fp16-fix", cache.get("sdxl"))  # the model's own VAE is kept
    with pytest.raises(ValueError, match="unknown vae"):
        GenerateRequest(prompt="x", vae="nope")


def test_hub_model_missing_from_the_cache_fails_with_the_repo_named(family):
    result = list(iter_side_by_side(ModelCache(), ["vega", "tiny-base"], REQUEST, warmup=False))
    assert "segmind/Segmind-Vega" in result[0].error and "huggingface-cli download" in result[0].error
    assert not result[1].error
    with pytest.raises(ModelLoadError):
        ModelCache().get(get_spec("vega"))
