"""LoRAs in generation: a diffusers-format LoRA made with peft loads, changes the image, scale 0 and no LoRA give
the base image, fuse matches unfused, metadata records it; bad LoRAs get clear errors."""
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from studio.build import SDXLArch, build_sdxl_pipeline
from studio.cli import parse_lora_args
from studio.generation import GenerateRequest, generate
from studio.hosting import Hosting
from studio.lora import LoraRef
from studio.paths import model_roots
from studio.pngmeta import read_png
from studio.demo.tokenizer import build_tokenizer
from tests.conftest import TINY_WORDS, make_tiny_pipeline


def save_random_lora(pipe, folder, seed=0, text_encoders=False):
    """A LoRA with random (non-zero) weights on the UNet's attention, or on both text encoders' attention."""
    torch.manual_seed(seed)
    modules = [pipe.text_encoder, pipe.text_encoder_2] if text_encoders else [pipe.unet]
    targets = ["q_proj", "k_proj", "v_proj", "out_proj"] if text_encoders else ["to_q", "to_k", "to_v", "to_out.0"]
    layers = []
    for module in modules:
        module.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets),
                           adapter_name="made")
        layers.append(get_peft_model_state_dict(module, adapter_name="made"))
    if text_encoders:
        StableDiffusionXLPipeline.save_lora_weights(folder, text_encoder_lora_layers=layers[0],
                                                    text_encoder_2_lora_layers=layers[1])
    else:
        StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=layers[0])
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pipe = make_tiny_pipeline()
    file = save_random_lora(make_tiny_pipeline(), tmp_path_factory.mktemp("lora"))
    return pipe, file


def image(pipe, **kwargs):
    result = generate(pipe, GenerateRequest(prompt="a red circle", seed=2, steps=2), **kwargs)
    return np.asarray(result.images[0], dtype=np.int16), result


def test_lora_changes_the_image_and_scale_zero_or_none_restores_it(setup):
    pipe, file = setup
    base, _ = image(pipe)
    with_lora, result = image(pipe, loras=[LoraRef(str(file), 1.0)])
    zero, _ = image(pipe, loras=[LoraRef(str(file), 0.0)])
    after, _ = image(pipe)  # adapters are off again outside the call
    assert np.abs(with_lora - base).mean() > 1.0
    assert np.abs(zero - base).max() <= 1 and np.array_equal(after, base)
    assert "Lora hashes: \"pytorch_lora_weights: " in result.parameters[0]


def test_text_encoder_lora_stays_inside_its_call_when_encoders_are_shared(tmp_path):
    """A student shares its base's text encoders (from_pipe): a text-encoder LoRA applied to one pipeline changes that
    call only; the other pipeline, and the same one without the LoRA, still give their base images."""
    file = save_random_lora(make_tiny_pipeline(), tmp_path, seed=1, text_encoders=True)
    base_pipe = make_tiny_pipeline()
    other = StableDiffusionXLPipeline.from_pipe(base_pipe, unet=make_tiny_pipeline(seed=3).unet)
    assert other.text_encoder is base_pipe.text_encoder
    base, other_base = image(base_pipe)[0], image(other)[0]
    with_lora, _ = image(other, loras=[LoraRef(str(file), 1.0)])
    assert np.abs(with_lora - other_base).mean() > 0.3  # deterministic: without an effect this is exactly 0
    assert np.array_equal(image(base_pipe)[0], base) and np.array_equal(image(other)[0], other_base)


def test_lora_generation_leaves_the_cached_pipeline_as_it_was_for_the_layers_tab(family, tmp_path):
    """A UNet + text-encoder LoRA generation through the app's cache, then the Layers tab's compare and export on
    the same cached model: same modules, same weights, no adapter left (the KeyError this used to cause)."""
    from studio.compare import iter_side_by_side
    from studio.loading import ModelCache
    from studio.ui.layers_tab import LayersHandlers

    cache = ModelCache()
    pipe = cache.get("tiny-base")
    parts = ("unet", "text_encoder", "text_encoder_2")

    def snapshot():
        return {p: ([(n, type(m)) for n, m in getattr(pipe, p).named_modules()],
                    {k: v.clone() for k, v in getattr(pipe, p).state_dict().items()}) for p in parts}

    before = snapshot()
    loras = [LoraRef(str(save_random_lora(make_tiny_pipeline(), tmp_path / "unet"))),
             LoraRef(str(save_random_lora(make_tiny_pipeline(), tmp_path / "te", seed=1, text_encoders=True)), 0.5)]
    (result,) = iter_side_by_side(cache, ["tiny-base"], GenerateRequest(prompt="a red circle", seed=2, steps=2),
                                  loras={"tiny-base": loras}, warmup=False)
    assert not result.error and "Lora hashes" in result.parameters[0]
    after = snapshot()
    for p in parts:
        assert after[p][0] == before[p][0], p  # module tree: no peft wrapper left
        assert after[p][1].keys() == before[p][1].keys()
        assert all(torch.equal(after[p][1][k], v) for k, v in before[p][1].items()), p
    assert not pipe.get_list_adapters() or not any(pipe.get_list_adapters().values())
    units = ["mid_block.attentions.0", "mid_block.resnets.1"]
    noop = lambda *a, **k: None  # noqa: E731 (gr.Progress stand-in: no UI here)
    full, ablated, numbers, head = LayersHandlers(cache, Hosting()).on_compare(
        "tiny-base", units, "(none)", "a red circle", "4", 2, 5.0, 0, request=None, progress=noop)
    assert len(full) == len(ablated) == 1 and "(config)" in head
    assert "tiny-lora-slim" in LayersHandlers(cache, Hosting()).on_export("tiny-base", units, "(none)", "tiny-lora-slim",
                                                                         request=None)


def test_plain_diffusers_loads_the_same_file(setup):
    pipe, file = setup
    plain = make_tiny_pipeline()
    plain.load_lora_weights(str(file))
    out = plain("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(2)).images[0]
    ours, _ = image(pipe, loras=[LoraRef(str(file), 1.0)])
    assert np.abs(np.asarray(out, dtype=np.int16) - ours).max() <= 1


def test_png_records_the_lora(setup, tmp_path):
    pipe, file = setup
    _, result = image(pipe, loras=[LoraRef(str(file), 0.5)])
    params, meta = read_png(result.save(tmp_path)[0])
    assert params["Lora hashes"].startswith("pytorch_lora_weights: ")
    assert meta["loras"] == [{"name": "pytorch_lora_weights", "scale": 0.5}]


def test_bad_loras_get_clear_errors(setup, tmp_path):
    pipe, _ = setup
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"garbage")
    other = build_sdxl_pipeline(SDXLArch(block_out_channels=(8, 16, 24), head_dim=8, text_hidden=(16, 16),
                                         vae_channels=(8, 8, 8), image_size=32), build_tokenizer(TINY_WORDS))
    wrong = save_random_lora(other, tmp_path / "other")
    cases = [
        (LoraRef(str(tmp_path / "missing.safetensors")), "not found"),
        (LoraRef(str(corrupt)), "not a valid .safetensors file"),
        (LoraRef(str(wrong)), "does not fit this model's architecture"),
    ]
    for ref, message in cases:
        with pytest.raises(ValueError, match=message):
            image(pipe, loras=[ref])
    with pytest.raises(ValueError, match="outside the allowed folders"):
        image(pipe, loras=[LoraRef(str(corrupt))], roots=model_roots())
    with pytest.raises(ValueError, match="LoRA scale must be between"):
        LoraRef("x.safetensors", 9)
    base, _ = image(pipe)  # still generates after the errors
    assert base.shape == (32, 32, 3)


def test_cli_lora_syntax():
    parsed = parse_lora_args(["a.safetensors:0.5", "m2=b.safetensors"], ["m1", "m2"])
    assert parsed == {"m1": [LoraRef("a.safetensors", 0.5)],
                      "m2": [LoraRef("a.safetensors", 0.5), LoraRef("b.safetensors", 1.0)]}
    with pytest.raises(ValueError, match="not among --model"):
        parse_lora_args(["m3=x.safetensors"], ["m1"])
