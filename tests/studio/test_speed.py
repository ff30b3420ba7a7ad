"""Speed options on the demo teacher: each within its stated tolerance of the default path, the cached pipeline left
exactly as it was after every call, clear errors for bad values, compile mode switching without recompiling."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from studio.ablation.metrics import ssim
from studio.demo.shapes import eval_prompts
from studio.generation import GenerateRequest, generate
from studio.loading import ModelCache
from studio.speed import compile_unet
from tests.conftest import make_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

# Tolerances, in 8-bit levels against the default path's image of the same prompt and seed (measured: attention,
# channels_last and fuse_qkv change at most 1 level on the demo teacher; the rest is float summation order).
EXACT_MATH_MAX_DIFF = 2
TILED_MIN_SSIM = 0.9  # tiled decoding blends overlapping tiles: a visible but small change at 128² (measured 0.93)
REUSE_2_MIN_MEAN_SSIM = 0.85  # interval 2 over 10 steps, 4 demo prompts (measured 0.91)


@pytest.fixture(scope="module")
def teacher():
    return ModelCache().get("demo-teacher")


def diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))


def snapshot(pipe) -> list:
    """Everything an option could leave behind: modules, their attributes and children, attention processors, and
    every tensor's storage, layout and values."""
    out = []
    for component in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        for name, m in component.named_modules():
            out.append((name, type(m).__name__, sorted(m.__dict__), list(m._modules),
                        id(getattr(m, "processor", None)), getattr(m, "fused_projections", None)))
        for name, t in list(component.named_parameters()) + list(component.named_buffers()):
            out.append((name, t.data_ptr(), t.stride(), t.dtype, float(t.detach().double().sum())))
    return out


@pytest.mark.parametrize("option", [dict(attention="classic"), dict(channels_last=True), dict(fuse_qkv=True),
                                    dict(vae_decode="full"), dict(vae_decode="sliced")])
def test_exact_math_options_match_the_default_path(teacher, option):
    request = GenerateRequest(prompt="a red circle on a blue background", seed=1, steps=4)
    default = generate(teacher, request).images[0]
    image = generate(teacher, replace(request, **option)).images[0]
    assert diff(image, default).max() <= EXACT_MATH_MAX_DIFF


def test_tiled_decoding_is_close_to_full_decoding_and_really_tiles(teacher):
    request = GenerateRequest(prompt="a red circle on a blue background", seed=1, steps=3, width=128, height=128)
    full = generate(teacher, replace(request, vae_decode="full")).images[0]
    tiled = generate(teacher, replace(request, vae_decode="tiled"))
    assert tiled.stats.vae_tiled and ssim(tiled.images[0], full) >= TILED_MIN_SSIM
    assert diff(tiled.images[0], full).max() > 0  # the demo VAE's tile is 64 px: at 128² it really tiles


def test_feature_reuse_stays_close_to_the_default_path(teacher):
    scores = []
    for prompt, seed in eval_prompts(4, "train"):
        request = GenerateRequest(prompt=prompt, seed=seed, steps=10)
        default = generate(teacher, request).images[0]
        reused = generate(teacher, replace(request, feature_reuse=2))
        assert reused.stats.reused_steps == 5
        scores.append(ssim(reused.images[0], default))
    assert np.mean(scores) >= REUSE_2_MIN_MEAN_SSIM and min(scores) < 1.0


def test_every_option_leaves_the_cached_pipeline_exactly_as_it_was(teacher):
    request = GenerateRequest(prompt="a green star on a black background", seed=2, steps=2)
    generate(teacher, request)  # libraries add first-call attributes; the snapshot comes after
    before = snapshot(teacher)
    everything = dict(attention="classic", channels_last=True, fuse_qkv=True, vae_decode="tiled", feature_reuse=2,
                      feature_reuse_branch=1)
    for option in [*({k: v} for k, v in everything.items()), everything]:
        generate(teacher, replace(request, **option))
        assert snapshot(teacher) == before, option


def test_options_are_undone_when_the_call_fails(teacher):
    before = snapshot(teacher)
    with pytest.raises(RuntimeError, match="stop here"):
        def fail(step, total, info):
            raise RuntimeError("stop here")
        generate(teacher, GenerateRequest(prompt="a red star on a blue background", seed=1, steps=3,
                                          channels_last=True, fuse_qkv=True, attention="classic", feature_reuse=2),
                 on_step=fail)
    assert snapshot(teacher) == before


@pytest.mark.parametrize("field,value,message", [
    ("attention", "flash", "attention must be one of: sdpa, classic"),
    ("channels_last", "yes", "channels_last must be true or false"),
    ("fuse_qkv", 1, "fuse_qkv must be true or false"),
    ("vae_decode", "fast", "vae_decode must be one of: auto, full, sliced, tiled"),
    ("vae", "taesd", "unknown vae 'taesd'"),
])
def test_bad_option_values_are_refused_naming_what_is_allowed(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerateRequest(prompt="x", **{field: value})


def test_fuse_qkv_with_a_lora_and_reuse_on_a_whole_compiled_unet_are_refused(tmp_path):
    from studio.lora import LoraRef
    from tests.studio.test_lora import save_random_lora

    pipe = make_tiny_pipeline()
    lora = save_random_lora(make_tiny_pipeline(), tmp_path / "style")
    with pytest.raises(ValueError, match="fuse_qkv cannot be combined with LoRAs"):
        generate(pipe, GenerateRequest(prompt="x", steps=1, fuse_qkv=True), loras=[LoraRef(str(lora), 1.0)])
    compile_unet(pipe.unet, "full", {})  # lazily: nothing is compiled before a call
    with pytest.raises(ValueError, match="feature_reuse cannot run on a UNet compiled whole"):
        generate(pipe, GenerateRequest(prompt="x", steps=2, feature_reuse=2))
    compile_unet(pipe.unet, "off", {})


def test_compile_modes_switch_back_and_forth_without_new_compiled_code():
    pipe = make_tiny_pipeline()
    memo = {}
    clean = [sorted(m.__dict__) for m in pipe.unet.modules()]
    compile_unet(pipe.unet, "regional", memo)
    regional = {id(m): m._compiled_call_impl for m in pipe.unet.modules() if "_compiled_call_impl" in m.__dict__}
    blocks = [m for m in pipe.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert set(regional) == {id(m) for m in blocks} and blocks
    compile_unet(pipe.unet, "full", memo)
    assert [m for m in pipe.unet.modules() if "_compiled_call_impl" in m.__dict__] == [pipe.unet]
    compile_unet(pipe.unet, "regional", memo)  # back: the same compiled callables, not new ones
    assert {id(m): m._compiled_call_impl for m in blocks} == regional
    compile_unet(pipe.unet, "off", memo)
    assert [sorted(m.__dict__) for m in pipe.unet.modules()] == clean
    with pytest.raises(ValueError, match="compile must be one of: off, regional, full"):
        compile_unet(pipe.unet, "max", memo)


def test_the_cache_compile_mode_is_validated_and_makes_the_next_call_a_warm_up(family):
    cache = ModelCache()
    with pytest.raises(ValueError, match="compile must be one of"):
        ModelCache(compile="fast")
    pipe = cache.get("tiny-base")
    cache.mark_warm("tiny-base")
    cache.set_compile("regional")
    assert not cache.is_warm("tiny-base")
    assert cache.get("tiny-base") is pipe and any("_compiled_call_impl" in m.__dict__ for m in pipe.unet.modules())
    cache.set_compile("off")
    assert not any("_compiled_call_impl" in m.__dict__ for m in cache.get("tiny-base").unet.modules())
    with pytest.raises(ValueError, match="compile must be one of"):
        cache.set_compile("yes")


@pytest.mark.slow
def test_regional_compile_gives_the_eager_image():
    """Runs torch.compile for real (tens of seconds on a CPU): RUN_SLOW=1."""
    pipe = make_tiny_pipeline()
    request = GenerateRequest(prompt="a red circle", seed=4, steps=3, feature_reuse=2)
    eager = generate(pipe, request).images[0]
    compile_unet(pipe.unet, "regional", {})
    try:
        compiled = generate(pipe, request).images[0]
    finally:
        compile_unet(pipe.unet, "off", {})
        torch._dynamo.reset()
    assert diff(compiled, eager).max() <= EXACT_MATH_MAX_DIFF
