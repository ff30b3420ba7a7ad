"""Feature reuse across steps (DeepCache-style): which modules it skips, how often the deep part really runs, interval 1
is the default path exactly, and the UNet is left exactly as it was."""
import numpy as np
import pytest
import torch

from studio.generation import GenerateRequest, generate
from studio.reuse import FeatureReuse, check_reuse, max_branch, skipped_modules
from tests.conftest import make_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline()


def module_state(unet):
    return [(name, sorted(m.__dict__), list(m._modules)) for name, m in unet.named_modules()]


def test_branch_0_skips_everything_but_the_shallowest_path(pipe):
    """DeepCache's cache_branch_id 0: every down block, the mid block, the inner up blocks and all but the last resnet
    of the outermost up block return their kept outputs; conv_in, that last resnet and conv_out run."""
    paths = [p for p, _ in skipped_modules(pipe.unet, 0)]
    n = len(pipe.unet.down_blocks)
    last_up = f"up_blocks.{n - 1}"
    resnets = len(pipe.unet.up_blocks[-1].resnets)
    assert paths == ([f"down_blocks.{i}" for i in range(n)] + ["mid_block"]
                     + [f"up_blocks.{k}" for k in range(n - 1)]
                     + [f"{last_up}.resnets.{j}" for j in range(resnets - 1)])
    deeper = [p for p, _ in skipped_modules(pipe.unet, 4)]  # block 1, layer 1: level 0 and part of level 1 run
    assert "down_blocks.0" not in deeper and "down_blocks.1.resnets.1" in deeper
    assert "down_blocks.1.resnets.0" not in deeper and f"up_blocks.{n - 1}.resnets.0" not in deeper
    assert max_branch(pipe.unet) == 3 * n - 1


def test_interval_1_is_the_default_path_exactly_and_n_recomputes_the_deep_part_every_n_steps(pipe):
    calls = {"mid": 0, "conv_out": 0}  # a hook inside the mid block fires only when its real forward runs
    handles = [pipe.unet.mid_block.resnets[0].register_forward_hook(lambda *a: calls.__setitem__("mid", calls["mid"] + 1)),
               pipe.unet.conv_out.register_forward_hook(lambda *a: calls.__setitem__("conv_out",
                                                                                      calls["conv_out"] + 1))]
    request = GenerateRequest(prompt="a red circle", seed=3, steps=7)
    try:
        default = np.asarray(generate(pipe, request).images[0])
        calls.update(mid=0, conv_out=0)
        with FeatureReuse(pipe.unet, interval=1) as reuse:  # patched, never reusing
            same = pipe(request.prompt, num_inference_steps=7, guidance_scale=request.guidance,
                        generator=torch.Generator().manual_seed(3), height=32, width=32,
                        callback_on_step_end=lambda p, i, t, kw: (reuse.next_step(), kw)[1]).images[0]
        assert np.array_equal(np.asarray(same), default)
        assert calls == {"mid": 7, "conv_out": 7} and reuse.full_steps == 7 and reuse.reused_steps == 0
        calls.update(mid=0, conv_out=0)
        result = generate(pipe, GenerateRequest(prompt="a red circle", seed=3, steps=7, feature_reuse=3))
        assert calls == {"mid": 3, "conv_out": 7}  # steps 0, 3, 6 run the deep part; the shallow branch every step
        assert result.stats.reused_steps == 4 and "Feature reuse: 3 (branch 0)" in result.parameters[0]
        reused = np.asarray(result.images[0], dtype=np.int16)
        assert np.abs(reused - default).max() > 0  # it really reused something
    finally:
        for h in handles:
            h.remove()


def test_a_single_step_never_reuses_and_the_unet_is_left_as_it_was(pipe):
    request = GenerateRequest(prompt="a blue star", seed=5, steps=1)
    generate(pipe, request)  # first-call attributes (transformers adds some) before the snapshot
    before = module_state(pipe.unet)
    plain = np.asarray(generate(pipe, request).images[0])
    reused = np.asarray(generate(pipe, GenerateRequest(prompt="a blue star", seed=5, steps=1, feature_reuse=4,
                                                       feature_reuse_branch=2)).images[0])
    assert np.array_equal(plain, reused)
    assert module_state(pipe.unet) == before  # no forward attribute left behind on any module


def test_an_error_inside_the_block_still_restores_the_modules(pipe):
    before = module_state(pipe.unet)
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureReuse(pipe.unet, interval=2):
            raise RuntimeError("boom")
    assert module_state(pipe.unet) == before


def test_bad_intervals_and_branches_are_refused_with_the_allowed_range(pipe):
    for bad in (0, 11, True, 2.5):
        with pytest.raises(ValueError, match="feature_reuse .* from 1 \\(off\\) to 10"):
            GenerateRequest(prompt="x", feature_reuse=bad)
    with pytest.raises(ValueError, match="feature_reuse_branch must be an integer from 0"):
        GenerateRequest(prompt="x", feature_reuse_branch=-1)
    top = max_branch(pipe.unet)
    with pytest.raises(ValueError, match=f"from 0 \\(shallowest\\) to {top} for this model's UNet"):
        generate(pipe, GenerateRequest(prompt="x", steps=2, feature_reuse=2, feature_reuse_branch=top + 1))
    check_reuse(2, top, pipe.unet)  # the top branch itself is allowed
