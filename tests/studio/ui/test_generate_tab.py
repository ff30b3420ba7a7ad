"""Generate tab logic: per-model defaults applied when the model set changes (the user's own values win), and image
zoom (small images at a whole-number zoom with sharp pixels, large ones untouched)."""
import numpy as np
from PIL import Image

from studio.registry import get_spec
from studio.ui.generate_run import display_image
from studio.ui.generate_tab import apply_defaults, model_defaults, on_models_change


def test_defaults_come_from_the_registry_model_cards():
    assert model_defaults("ssd-1b") == {"steps": 30, "guidance": 9.0, "negative_prompt": "ugly, blurry, poor quality",
                                        "scheduler": "Euler"}
    assert model_defaults("sdxl") == {"steps": 30, "guidance": 5.0, "negative_prompt": "", "scheduler": "Euler"}
    assert model_defaults("vega")["guidance"] == 9.0 and "worst quality" in model_defaults("vega")["negative_prompt"]
    demo = get_spec("demo-teacher")
    assert model_defaults("demo-teacher") == {"steps": demo.default_steps, "guidance": demo.default_guidance,
                                              "negative_prompt": "", "scheduler": "Euler"}
    # few-step models: LCMScheduler and their cards' steps / CFG
    assert model_defaults("lcm-lora-sdxl") == {"steps": 4, "guidance": 1.0, "negative_prompt": "", "scheduler": "LCM"}
    assert model_defaults("lcm-ssd-1b") == {"steps": 4, "guidance": 8.0, "negative_prompt": "", "scheduler": "LCM"}
    assert model_defaults("vega-rt")["scheduler"] == "LCM" and get_spec("vega-rt").base == "vega"
    lcm = get_spec("demo-lcm")
    assert lcm.few_step and model_defaults("demo-lcm") == {"steps": 4, "guidance": lcm.default_guidance,
                                                           "negative_prompt": "", "scheduler": "TCD"}


def test_changing_models_applies_their_defaults_except_values_the_user_changed():
    start = model_defaults("demo-teacher")
    values, applied, info = apply_defaults(["ssd-1b"], dict(start), start)
    assert values == model_defaults("ssd-1b") == applied
    assert "Defaults applied from **ssd-1b**: Euler, 30 steps, CFG 9" in info and "1024²" in info
    # the user sets CFG 7 by hand, then adds sdxl first: steps and negative prompt follow sdxl, CFG stays 7
    mine = dict(values, guidance=7.0)
    values, applied, info = apply_defaults(["sdxl", "ssd-1b"], mine, applied)
    assert values == {"steps": 30, "guidance": 7.0, "negative_prompt": "", "scheduler": "Euler"}
    assert applied == model_defaults("sdxl") and "Your own value kept for: guidance" in info
    assert "Other cards" in info and "**ssd-1b**: Euler, 30 steps, CFG 9" in info
    # a few-step model beside the teacher keeps its own card (it runs with it, see compare.iter_side_by_side)
    values, _, info = apply_defaults(["demo-teacher", "demo-lcm"], dict(start), start)
    assert values == start and "Few-step models run with their own card: **demo-lcm**: TCD, 4 steps" in info
    # picked first, the few-step model still leaves the widgets to the teacher (20 Euler steps), and keeps its card
    values, applied, info = apply_defaults(["demo-lcm", "demo-teacher"], dict(start), start)
    assert values == start == applied and (values["steps"], values["scheduler"]) == (20, "Euler")
    assert info.startswith("Defaults applied from **demo-teacher**: Euler, 20 steps")
    assert "Few-step models run with their own card: **demo-lcm**: TCD, 4 steps" in info
    values, applied, info = apply_defaults(["demo-lcm", "demo-lcm-lora"], dict(start), start)  # few-step only
    assert (values["steps"], values["scheduler"]) == (4, "TCD") and "Few-step models run" not in info
    # the UI handler returns the widget values in DEFAULT_FIELDS order, then the state and the line
    steps, guidance, negative, sampler, state, line = on_models_change(["vega"], 30, 5.0, "", "Euler",
                                                                       model_defaults("sdxl"))
    assert (steps, guidance, negative, sampler) == (30, 9.0, model_defaults("vega")["negative_prompt"], "Euler")
    assert state == model_defaults("vega") and "**vega**" in line
    assert apply_defaults([], {"steps": 3, "guidance": 1.0, "negative_prompt": "x"}, {})[0]["steps"] == 3
    assert on_models_change(["demo-lcm"], 30, 5.0, "", "Euler", model_defaults("sdxl"))[:4] == (
        4, get_spec("demo-lcm").default_guidance, "", "TCD")


def test_small_images_are_zoomed_by_whole_numbers_with_sharp_pixels():
    small = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    big, zoom = display_image(small)
    assert zoom == 4 and big.size == (256, 256)
    assert np.array_equal(np.asarray(big)[::4, ::4], np.asarray(small))  # nearest neighbour: each pixel a 4×4 block
    assert np.array_equal(np.asarray(big)[3::4, 3::4], np.asarray(small))
    assert display_image(Image.new("RGB", (32, 32)))[1] == 4  # never more than 4×
    assert display_image(Image.new("RGB", (128, 96)))[1] == 3
    large = Image.new("RGB", (1024, 1024))
    assert display_image(large) == (large, 1)  # fitted to the column by the gallery, not resampled here
