"""Training configs refuse what a hostile or careless caller can type (issue 13, item 7): every number finite and
within its bounds (bools are not numbers), every string and list length-limited, path names short enough for the
file system. The bounds live in the dataclasses, so the CLI (``python -m training.<kind> --config``) gets them too."""
from __future__ import annotations

import dataclasses
import math

import pytest

from studio.train_config import CONFIG_CLASSES, DistillConfig, LoraTrainConfig

LORA = {"dataset": "demo:orange"}  # the smallest valid LoRA config (demo-teacher base, concept data in memory)


def make(cls, **fields):
    return cls(**(LORA if cls is LoraTrainConfig else {}), **fields)


@pytest.mark.parametrize("cls", CONFIG_CLASSES.values(), ids=CONFIG_CLASSES)
def test_every_number_field_has_bounds_and_the_defaults_are_inside(cls):
    numbers = [f.name for f in dataclasses.fields(cls) if f.type in ("int", "float")]
    bounds = cls.class_table("BOUNDS")
    assert numbers and set(numbers) <= set(bounds), set(numbers) - set(bounds)
    make(cls)  # the defaults validate


NAN, INF = float("nan"), float("inf")
FLOATS = ["weight_decay", "max_grad_norm", "max_minutes", "noise_offset", "lr", "ema_decay"]


@pytest.mark.hostile
@pytest.mark.parametrize("cls", CONFIG_CLASSES.values(), ids=CONFIG_CLASSES)
@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_no_float_field_takes_a_non_finite_value(cls, value):
    """Issue 13 (7): NaN was accepted for weight_decay, max_grad_norm, max_minutes, noise_offset, the lambdas."""
    floats = [f.name for f in dataclasses.fields(cls) if f.type == "float"]
    assert set(FLOATS) - {"noise_offset"} <= set(floats)  # the optimisation ones every config has
    for name in floats:
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name} must be a finite number"):
            make(cls, **{name: value})


@pytest.mark.hostile
@pytest.mark.parametrize("name, value, message", [
    ("steps", True, "steps must be an integer >= 1 and <= 10000000; got True"),
    ("steps", 10**12, "steps must be an integer >= 1 and <= 10000000"),
    ("steps", 3.0, "steps must be an integer"),
    ("steps", "300", "steps must be an integer"),
    ("batch_size", 10**6, "batch_size must be an integer >= 1 and <= 4096"),
    ("grad_accum", 0, "grad_accum must be an integer >= 1"),
    ("seed", 2**64, "seed must be an integer >= 0 and <= 4294967295"),
    ("seed", -1, "seed must be an integer >= 0"),
    ("keep_checkpoints", 10**9, "keep_checkpoints must be an integer >= 0 and <= 10000"),
    ("validation_steps", True, "validation_steps must be an integer >= 1 and <= 150"),
    ("dataset_count", 10**9, "dataset_count must be an integer >= 1"),
    ("lambda_task", 1e9, "lambda_task must be a finite number >= 0 and <= 1000"),
    ("buckets", [[100000, 100000]], "buckets: each bucket is .* from 8 to 4096"),
    ("buckets", [[64, True]], "buckets: each bucket"),
    ("buckets", [[64, 64]] * 65, "buckets takes at most 64 entries"),
    ("buckets", "64x64", "buckets must be a list"),
    ("teachers", "assets/demo/teacher@nan", r"teachers \(a weight\) must be a finite number"),
    ("teachers", [{"path": "assets/demo/teacher", "weight": INF}], r"teachers \(a weight\) must be a finite"),
    ("teachers", [{"path": 5}], r"teachers \(a path\) must be text"),
    ("teachers", [{"path": "assets/demo/teacher"}] * 9, "teachers takes at most 8 entries"),
    ("teachers", ["x" * 300], "each folder or file name in a path is at most 255 bytes"),
    ("stages", [{"at_step": True, "recipe": "vega"}], r"stages \(at_step\) must be an integer"),
    ("stages", [{"at_step": 5, "units": "mid_block"}], "units is a list"),
    ("feature_weights", {"mid_block": True}, r"feature_weights\['mid_block'\] must be a finite number"),
    ("feature_weights", {"mid_block": NAN}, "must be a finite number"),
    ("validation_prompts", ["x" * 2001], "each entry is non-empty text of at most 2000 characters"),
    ("validation_prompts", ["ok"] * 65, "validation_prompts takes at most 64 entries"),
    ("cache_dir", "c" * 256, "each folder or file name in a path is at most 255 bytes"),
    ("cache_dir", "a/" * 600, "must be text of at most 1024 characters"),
    ("dataset", 5, "dataset must be text"),
    ("student", ["vega"], "student must be text"),
    ("caption_column", "c" * 65, "caption_column must be text of at most 64"),
    ("base_name", "b" * 65, "base_name must be text of at most 64"),
    ("cache_latents", "yes", "cache_latents must be true or false"),
    ("output_dir", "o\0", "output_dir must be text"),
])
def test_distill_config_refuses_with_the_field_and_range(name, value, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**{name: value})


@pytest.mark.hostile
@pytest.mark.parametrize("name, value, message", [
    ("rank", 10**9, "rank must be an integer >= 1 and <= 1024"),
    ("alpha", NAN, "alpha must be a finite number"),
    ("kd_weight", 1e300 * 10, "kd_weight must be a finite number"),
    ("target_modules", ["to_q"] * 257, "target_modules takes at most 256 entries"),
    ("target_modules", ["t" * 201], "at most 256 module names"),
    ("exclude_modules", "x" * 2001, "exclude_modules must be text of at most 2000"),
    ("init_lora", "l" * 300, "each folder or file name in a path is at most 255 bytes"),
    ("train_text_encoder", 1, "train_text_encoder must be true or false"),
])
def test_lora_config_refuses_with_the_field_and_range(name, value, message):
    with pytest.raises(ValueError, match=message):
        make(LoraTrainConfig, **{name: value})


def test_the_bounds_reach_the_command_line(tmp_path):
    """The CLI loads configs through the same dataclasses: a NaN in a TOML file is refused naming the field."""
    path = tmp_path / "job.toml"
    path.write_text("weight_decay = nan\n")
    with pytest.raises(ValueError, match="DistillConfig.weight_decay must be a finite number"):
        DistillConfig.load(path)
    assert math.isclose(DistillConfig.load(None, {"weight_decay": 0.5}).weight_decay, 0.5)
