"""Job presets are the files under configs/: each is listed, the CPU ones validate as they are, and the GPU ones name
placeholders that validation refuses with what to download or where to put the data."""
from __future__ import annotations

import pytest

from studio.jobs import DEFAULT_PRESET, list_presets, preset_config, validate_config
from studio.jobs.presets import CONFIGS_DIR

GPU = {"distill-ssd1b-from-sdxl", "distill-vega-from-sdxl", "lora-sdxl", "lora-ssd-1b", "lora-vega",
       "fewstep-sdxl-lcm-lora"}


def test_every_config_file_is_a_preset_with_a_title():
    presets = list_presets()
    assert presets[0].name == DEFAULT_PRESET
    assert {p.name for p in presets} == {p.stem for p in CONFIGS_DIR.glob("*.toml")}
    assert all(p.kind == p.name.split("-")[0] and p.title and not p.title.startswith("#") for p in presets)
    assert GPU <= {p.name for p in presets}
    with pytest.raises(ValueError, match="unknown preset 'nope'; presets: distill-demo-vega-5min"):
        preset_config("nope")


@pytest.mark.parametrize("name", sorted(p.name for p in list_presets() if p.name not in GPU))
def test_cpu_presets_validate_as_they_are(name):
    kind, config = preset_config(name)
    assert "output_dir" not in config  # a job writes into its own folder
    frozen = validate_config(kind, config | {"output_dir": "job/train"})
    assert frozen["steps"] == config["steps"]


@pytest.mark.parametrize("name, words", [
    ("distill-ssd1b-from-sdxl", ["'models/sdxl-base-1.0' does not exist",
                                 "huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0 "
                                 "--local-dir models/sdxl-base-1.0"]),
    ("distill-vega-from-sdxl", ["'models/sdxl-base-1.0' does not exist", "huggingface-cli download"]),
    ("lora-sdxl", ["'data/lora-images' does not exist", "metadata.jsonl"]),
    ("lora-ssd-1b", ["'data/lora-images' does not exist"]),
    ("lora-vega", ["'data/lora-images' does not exist"]),
    ("fewstep-sdxl-lcm-lora", ["'data/lcm-sdxl' does not exist", "metadata.jsonl"]),
])
def test_gpu_presets_are_refused_until_their_placeholders_are_real(name, words, tiny_folder, tmp_path):
    kind, config = preset_config(name)
    with pytest.raises(ValueError) as err:
        validate_config(kind, config | {"output_dir": "x"})
    for w in words:
        assert w in str(err.value)
    data = tmp_path / "images"
    data.mkdir()
    (data / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a photo"}\n')
    real = {"dataset": str(data), "output_dir": "x"} | ({"teachers": [{"path": str(tiny_folder)}]}
                                                       if kind == "distill" else {})
    assert validate_config(kind, config | real)["dataset"] == str(data)


def test_vega_from_sdxl_is_vegas_recipe_not_ssd1bs():
    _, ssd = preset_config("distill-ssd1b-from-sdxl")
    _, vega = preset_config("distill-vega-from-sdxl")
    assert (ssd["student"], vega["student"]) == ("ssd-1b", "vega")
    assert ssd["validation_guidance"] == 9.0 and vega["validation_guidance"] == 0.0  # the teacher's default
