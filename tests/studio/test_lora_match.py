"""Which models a LoRA fits, read from the file header and the UNet configs (nothing loaded): the demo family's
committed LoRAs against the demo teacher, its layer-removed students and the real SDXL-family configs."""
from __future__ import annotations

import pytest

from studio.lora import LoraRef
from studio.lora_match import lora_fit, plan_loras, read_lora_header
from studio.paths import DEMO_DIR
from studio.registry import get_spec

TEACHER_LORA = LoraRef(str(DEMO_DIR / "loras" / "demo-teacher-orange.safetensors"))
SSD_LORA = LoraRef(str(DEMO_DIR / "loras" / "demo-ssd-orange.safetensors"), 0.8)


def test_the_header_says_what_a_lora_was_made_for_and_which_layers_it_adapts():
    header = read_lora_header(TEACHER_LORA.path)
    assert header.made_for == "demo-teacher" and len(header.adapters) == 132
    assert all(name.endswith(("attn2.to_k", "attn2.to_v")) for name in header.adapters)


@pytest.mark.parametrize("lora, model, fits", [
    (TEACHER_LORA, "demo-teacher", True), (TEACHER_LORA, "demo-ssd", False), (TEACHER_LORA, "demo-vega", False),
    (TEACHER_LORA, "sdxl", False), (SSD_LORA, "demo-ssd", True), (SSD_LORA, "demo-vega", False),
    (SSD_LORA, "demo-teacher", False),  # every layer name exists in the teacher: only the header can tell
])
def test_a_lora_fits_only_the_architecture_it_was_made_for(lora, model, fits):
    fit = lora_fit(lora, get_spec(model))
    assert fit.fits is fits and (fit.reason == "") is fits


def test_a_teacher_lora_on_its_student_says_why_and_how_to_port_it():
    fit = lora_fit(TEACHER_LORA, get_spec("demo-vega"))
    assert fit.reason.startswith("LoRA demo-teacher-orange was made for demo-teacher: 106 of the 132 UNet layers")
    assert fit.port.startswith("python -m training.lora demo port --lora assets/demo/loras/demo-teacher-orange."
                               "safetensors --student demo-vega --out ")
    ssd_on_teacher = lora_fit(SSD_LORA, get_spec("demo-teacher"))
    assert "another architecture than demo-ssd's (70 transformer layers instead of 34)" in ssd_on_teacher.reason
    assert ssd_on_teacher.port == ""  # a student's LoRA does not port back to the teacher


def test_plan_applies_where_it_fits_and_where_the_user_insists():
    specs = [get_spec(m) for m in ("demo-teacher", "demo-ssd", "demo-vega")]
    loras, notes = plan_loras(specs, SSD_LORA, [])
    assert loras == {"demo-ssd": [SSD_LORA]} and notes["demo-ssd"].text == "LoRA demo-ssd-orange ×0.8"
    assert notes["demo-teacher"].warning and notes["demo-teacher"].text.startswith("LoRA not applied.")
    loras, notes = plan_loras(specs, SSD_LORA, ["demo-vega"])  # named: applied, with the warning
    assert loras == {"demo-vega": [SSD_LORA]} and list(notes) == ["demo-vega"]
    assert notes["demo-vega"].warning and "applied as asked, although it does not fit: LoRA demo-ssd-orange was" in \
        notes["demo-vega"].text
    assert plan_loras(specs, None, []) == ({}, {})
    with pytest.raises(ValueError, match="not among the selected models"):
        plan_loras(specs, SSD_LORA, ["sdxl"])
    with pytest.raises(ValueError, match="not found"):
        plan_loras(specs, LoraRef(str(DEMO_DIR / "loras" / "missing.safetensors")), [])


def test_a_lora_without_a_header_is_judged_by_its_layers(family, tmp_path):
    """A LoRA from elsewhere (no studio header): fits a model with its layers, not one without them."""
    from studio.resolve import resolve_spec
    from tests.conftest import make_tiny_pipeline
    from tests.studio.test_lora import save_random_lora

    file = save_random_lora(make_tiny_pipeline(), tmp_path / "plain")
    ref = LoraRef(str(file))
    assert read_lora_header(file).made_for == ""
    assert lora_fit(ref, resolve_spec("tiny-base")).fits and lora_fit(ref, resolve_spec("tiny-student")).fits
    assert not lora_fit(ref, get_spec("demo-teacher")).fits
