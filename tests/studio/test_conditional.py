"""Conditional models in the studio (issue 17: a ControlNet or T2I-Adapter on a frozen base, demo-sr's
super-resolution): the registry marks them, the cache loads them as a ControlNet or T2I-Adapter pipeline (every test
runs with both), the output follows the condition image, a stop ends the call, a
missing or unfit condition image gets a clear error before anything loads, the Generate handler takes the image end
to end on a tiny model, and the arena keeps them out of text-to-image battles with the reason."""
from __future__ import annotations

import json
import shutil

import gradio as gr
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from studio.arena_cli import make_generate_fn
from studio.arena_service import ArenaService, battle_pool, default_pool
from studio.arena_cache import ArenaError
from studio.compare import iter_side_by_side
from studio.fewstep import ADAPTER_FOLDERS
from studio.generation import GenerateRequest, GenerationCancelled, condition_request, generate
from studio.hosting import Hosting
from studio.loading import ModelCache, Runtime
from studio.paths import models_dir
from studio.registry import get_spec, list_models
from studio.ui.generate_tab import GenerateHandlers
from studio.ui.image_inputs import on_condition_models
from training.fewstep_models import build_adapter

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a red circle on a blue background"
RED, BLUE = Image.new("RGB", (32, 32), (220, 30, 30)), Image.new("RGB", (32, 32), (30, 60, 220))


PIPELINES = {"controlnet": "StableDiffusionXLControlNetPipeline", "t2i-adapter": "StableDiffusionXLAdapterPipeline"}


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def tiny_sr(family, request):
    """An exported conditional model on tiny-base (32 px, 8x8 condition), with either adapter. A ControlNet's
    zero-initialised convolutions (condition embedding out, residual outputs) are given weights, so that the
    condition reaches the UNet (a trained adapter's state); a T2I-Adapter's ordinary initialisation already does."""
    kind = request.param
    folder = models_dir() / "tiny-sr"
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(0)
    adapter = build_adapter(UNet2DConditionModel.from_pretrained(family["base"] / "unet"), kind, vae_scale_factor=4)
    if kind == "controlnet":
        with torch.no_grad():
            for block in [*adapter.controlnet_down_blocks, adapter.controlnet_mid_block,
                          adapter.controlnet_cond_embedding.conv_out]:
                block.weight.normal_(0, 3.0)
    adapter.save_pretrained(folder / ADAPTER_FOLDERS[kind], safe_serialization=True)
    (folder / "studio_model.json").write_text(json.dumps({
        "base": "tiny-base", "default_size": 32, "default_steps": 2, "default_guidance": 1.0, "scheduler": "LCM",
        "scheduler_config": {"original_inference_steps": 50}, "pipeline": PIPELINES[kind],
        ADAPTER_FOLDERS[kind]: ADAPTER_FOLDERS[kind], "condition": {"kind": "low-res", "size": 8, "resample": "box"}}))
    yield get_spec("tiny-sr")
    shutil.rmtree(folder, ignore_errors=True)


def tiny_sr_folder():
    return models_dir() / "tiny-sr"


def cpu_cache() -> ModelCache:
    return ModelCache(budget_bytes=1 << 40, runtime=Runtime(torch.device("cpu"), torch.float32))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.float32)


def test_registry_marks_conditional_models_and_demo_sr(tiny_sr):
    assert tiny_sr.conditional and tiny_sr.condition_size == 8 and tiny_sr.base == "tiny-base"
    assert tiny_sr.few_step and not get_spec("tiny-base").conditional
    if "demo-sr" in {s.name for s in list_models()}:  # shipped with the demo family
        sr = get_spec("demo-sr")
        assert sr.conditional and (sr.condition_size, sr.default_size, sr.base) == (16, 64, "demo-teacher")
        assert (sr.scheduler, sr.default_steps) == ("LCM", 4)


def test_the_output_follows_the_condition_image_and_a_missing_one_is_refused(tiny_sr):
    cache = cpu_cache()
    pipe = cache.get(tiny_sr)
    assert type(pipe).__name__ == json.loads((tiny_sr_folder() / "studio_model.json").read_text())["pipeline"]
    assert pipe.text_encoder is cache.get("tiny-base").text_encoder  # shared with its base

    def run(image):
        request = condition_request(tiny_sr, GenerateRequest(PROMPT, seed=1, steps=2, guidance=1.0,
                                                             scheduler="LCM", condition_image=image))
        assert request.condition_image.size == (8, 8)  # the card's condition: the 8x8 downsample
        return generate(pipe, request, model_name=tiny_sr.name)

    red, red2, blue = run(RED), run(RED.copy()), run(BLUE)
    np.testing.assert_array_equal(pixels(red), pixels(red2))
    assert np.abs(pixels(red) - pixels(blue)).mean() > 0.1  # the condition changes the image (measured 0.33)
    assert "Condition: 8x8 image" in red.parameters[0]
    with pytest.raises(ValueError, match="tiny-sr is a conditional model: it makes its image from a condition image"):
        condition_request(tiny_sr, GenerateRequest(PROMPT))
    with pytest.raises(ValueError, match="needs a condition image"):
        generate(pipe, GenerateRequest(PROMPT, steps=1), model_name="tiny-sr")
    with pytest.raises(ValueError, match="width and height must be equal"):
        condition_request(tiny_sr, GenerateRequest(PROMPT, width=32, height=64, condition_image=RED))


def test_a_folder_with_two_adapters_is_refused_with_both_named(tiny_sr):
    folder = tiny_sr_folder()
    other = folder / next(d for d in ADAPTER_FOLDERS.values() if not (folder / d).is_dir())
    other.mkdir()
    try:
        with pytest.raises(ValueError, match="holds two condition adapters .*adapter/.*a conditional model folder "
                                             "keeps one"):
            cpu_cache().get(tiny_sr)
    finally:
        other.rmdir()
    assert cpu_cache().get(tiny_sr) is not None  # the folder as it was loads again


def test_a_stop_ends_a_conditional_call_at_the_step_it_was_asked(tiny_sr):
    """The T2I-Adapter pipeline has only the older per-step callback: progress and stop go through it."""
    pipe, seen = cpu_cache().get(tiny_sr), []
    request = condition_request(tiny_sr, GenerateRequest(PROMPT, seed=1, steps=4, guidance=1.0, scheduler="LCM",
                                                         condition_image=RED))
    with pytest.raises(GenerationCancelled) as stopped:
        generate(pipe, request, model_name=tiny_sr.name, on_step=lambda i, n, info: seen.append((i, n)),
                 should_stop=lambda: len(seen) >= 2)
    assert seen == [(1, 4), (2, 4)] and (stopped.value.step, stopped.value.total) == (2, 4)
    assert generate(pipe, request, model_name=tiny_sr.name).images  # the pipeline still serves


def test_the_request_takes_only_bounded_image_data():
    with pytest.raises(ValueError, match="condition_image must be image data .*file paths are not accepted"):
        GenerateRequest(PROMPT, condition_image="/etc/passwd")
    with pytest.raises(ValueError, match="condition_image is 2049x2048; at most 2048x2048"):
        GenerateRequest(PROMPT, condition_image=Image.new("L", (2049, 2048)))
    request = GenerateRequest(PROMPT, condition_image=Image.new("RGBA", (16, 16)))
    assert request.condition_image.mode == "RGB"
    assert request.to_dict()["condition"] == "16x16 image" and "condition_image" not in request.to_dict()


def test_side_by_side_the_text_to_image_model_ignores_the_condition_and_missing_fails_before_loading(tiny_sr):
    cache = cpu_cache()
    request = GenerateRequest(PROMPT, seed=3, steps=2, guidance=1.0, condition_image=RED)
    results = list(iter_side_by_side(cache, ["tiny-base", "tiny-sr"], request, warmup=False))
    assert [r.error for r in results] == ["", ""]
    assert results[0].request.condition_image is None and "Condition" not in results[0].parameters[0]
    assert results[1].request.condition_image.size == (8, 8) and results[1].request.scheduler == "LCM"
    empty = cpu_cache()
    with pytest.raises(ValueError, match="tiny-sr is a conditional model"):
        list(iter_side_by_side(empty, ["tiny-base", "tiny-sr"], GenerateRequest(PROMPT, steps=1), warmup=False))
    assert empty.loaded() == []  # refused before anything loaded


def test_generate_handler_takes_the_condition_image_end_to_end(tiny_sr, tmp_path):
    handlers = GenerateHandlers(cpu_cache(), Hosting())  # local mode
    upload = tmp_path / "condition.png"
    RED.resize((64, 64)).save(upload)  # any size: fitted and downsampled as the model's card says
    values = dict(prompt=PROMPT, negative_prompt="", seed=4, steps=2, guidance=1.0, scheduler="LCM", batch_size=1,
                  width=0, height=0, init_image=None, strength=0.75)
    outputs = list(handlers.on_generate(["tiny-sr"], **values, condition_image=str(upload),
                                        request=gr.Request(session_hash="cond")))
    *galleries, stats, files, seed = outputs[-1]
    assert len(galleries[0].constructor_args["value"]) == 1 and len(files) == 1 and seed == 4
    with pytest.raises(gr.Error, match="tiny-sr is a conditional model"):
        list(handlers.on_generate(["tiny-sr"], **values, request=gr.Request(session_hash="cond2")))
    shown, note = on_condition_models(["tiny-base", "tiny-sr"])
    assert shown.visible and "tiny-sr" in note and "8x8" in note
    assert not on_condition_models(["tiny-base"])[0].visible


def test_the_arena_keeps_conditional_models_out_of_battles_with_the_reason(tiny_sr, tmp_path):
    assert "tiny-sr" not in default_pool() and "demo-sr" not in default_pool()
    assert battle_pool(["tiny-base", "tiny-sr", "demo-teacher"]) == ["tiny-base", "demo-teacher"]
    service = ArenaService(cpu_cache(), db_path=tmp_path / "votes.db", hosting=Hosting())
    with pytest.raises(ArenaError, match="tiny-sr: conditional model.* need a condition image"):
        service.set_pool(["tiny-base", "tiny-sr", "demo-teacher"])
    with pytest.raises(ValueError, match="the arena pits text-to-image models only"):
        make_generate_fn(lambda name: None)("tiny-sr", PROMPT, 1, {})
