"""The Train tab's form read from the config classes (help from field comments, ranges from the validation bounds),
its round trip with a config by field name, the loss plot's legend and scale, automatic job names, what a GPU preset
lacks on this machine."""
import dataclasses

import pytest

from studio.jobs import list_presets, preset_config
from studio.jobs.kinds import missing_for
from studio.jobs.plot import SERIES_LABELS, loss_figure
from studio.jobs.runner import auto_name
from studio.train_config import CONFIG_CLASSES, DistillConfig, LoraTrainConfig, TrainConfig
from studio.train_config.form import apply_form, field_comments, form_fields, form_values


def test_help_comes_from_the_field_comments_and_ranges_from_the_validation_bounds():
    by_name = {f.name: f for f in form_fields(DistillConfig)}
    assert by_name["lambda_feat"].help.startswith("weight of the feature loss")
    assert by_name["student_keep"].choices == ("spread", "first") and not by_name["student_keep"].custom
    assert by_name["student"].custom and "vega" in by_name["student"].choices  # or an exported student folder
    assert (by_name["lr"].minimum, by_name["lr"].maximum) == (0, 1) and "in (0, 1]" in by_name["lr"].help
    assert by_name["steps"].kind == "int" and by_name["steps"].minimum == 1 and "optimizer steps" in by_name["steps"].help
    rank = {f.name: f for f in form_fields(LoraTrainConfig)}["rank"]
    assert rank.minimum == 1 and "an integer >= 1 and <= 1024" in rank.help
    assert field_comments(LoraTrainConfig)["steps"] == "optimizer steps"  # inherited fields keep their comment
    for cls in CONFIG_CLASSES.values():  # every form field is a field; every field the form names is commented
        names = {f.name for f in dataclasses.fields(cls)}
        assert {f.name for f in form_fields(cls)} <= names
        assert all(f.help for f in form_fields(cls))


@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, "DistillConfig.steps must be an integer >= 1 and <= 10000000; got 0"),
    ("lr", 2.0, "DistillConfig.lr must be a finite number in (0, 1]; got 2.0"),
    ("lambda_feat", -1.0, "DistillConfig.lambda_feat must be a finite number >= 0 and <= 1000; got -1.0"),
    ("caption_dropout", 1.0, "DistillConfig.caption_dropout must be a finite number in [0, 1); got 1.0"),
    ("feature_level", "blocks", "DistillConfig.feature_level must be one of ('layer', 'block'); got 'blocks'"),
    ("batch_size", 2.5, "DistillConfig.batch_size must be an integer >= 1 and <= 4096; got 2.5"),
])
def test_the_bounds_the_form_shows_are_the_ones_validation_enforces(field, value, message):
    with pytest.raises(ValueError) as err:
        DistillConfig(**{field: value})
    assert str(err.value) == message
    shown = {f.name: f for f in form_fields(DistillConfig, (field,))}[field]
    bound = DistillConfig.class_table("BOUNDS").get(field)
    assert bound is None or bound.describe() in shown.help


@pytest.mark.parametrize("preset", [p.name for p in list_presets()])
def test_form_and_config_round_trip_by_field_name(preset):
    kind, config = preset_config(preset)
    cls = CONFIG_CLASSES[kind]
    values = form_values(cls, config)
    assert apply_form(cls, config, values) == config  # the form shows the config and writes back the same
    changed = apply_form(cls, config, {"steps": 7.0, "lr": 1, "batch_size": None})
    assert changed == config | {"steps": 7, "lr": 1.0} and isinstance(changed["steps"], int)
    assert isinstance(changed["lr"], float)


def test_teachers_edit_as_text_in_the_form():
    config = {"teachers": [{"path": "a", "weight": 1.0}, {"path": "b b", "weight": 0.5}]}
    assert form_values(DistillConfig, config, ("teachers",)) == {"teachers": "a, b b@0.5"}
    assert apply_form(DistillConfig, {}, {"teachers": "a, b b@0.5"}) == config
    assert form_values(DistillConfig, {}, ("teachers",)) == {"teachers": "assets/demo/teacher"}  # the default


def test_loss_plot_names_every_series_and_uses_a_log_scale_when_terms_span_decades():
    rows = [{"step": s, "loss": 12.0 / s, "task": 0.1 / s, "out": 0.3 / s, "feat": 25.0 / s, "lr": 1e-4}
            for s in range(1, 30)]
    fig = loss_figure(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [SERIES_LABELS[k] for k in ("loss", "task", "out",
                                                                                                "feat")]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss (log scale)"
    close = loss_figure([{"step": 1, "loss": 1.0, "task": 0.5}, {"step": 2, "loss": 0.9, "task": 0.45}])
    assert close.axes[0].get_yscale() == "linear"  # one decade: a linear axis reads better
    assert loss_figure([]) is None


def test_automatic_job_names_say_each_part_once():
    assert auto_name("20261202-011756-distill-9762") == "distill-20261202-0117-9762"
    assert auto_name("20261202-011756-lora-ab01") == "lora-20261202-0117-ab01"


def test_gpu_presets_say_what_is_missing_and_how_to_get_it():
    kind, config = preset_config("distill-ssd1b-from-sdxl")
    missing = missing_for(kind, config, cuda=False)
    assert len(missing) == 3
    assert ("`huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0 --local-dir models/sdxl-base-1.0`"
            in missing[0])
    assert "data/sdxl-distill" in missing[1] and "metadata.jsonl" in missing[1]
    assert "no CUDA GPU" in missing[2] and "accelerate launch -m training.distill" in missing[2]
    assert len(missing_for(kind, config, cuda=True)) == 2  # on a GPU only the downloads remain
    demo_kind, demo = preset_config("distill-demo-vega-5min")
    assert missing_for(demo_kind, demo, cuda=False) == []


def test_train_config_form_is_shared_by_every_kind():
    for cls in CONFIG_CLASSES.values():
        assert set(TrainConfig.FORM) <= {f.name for f in form_fields(cls)}
