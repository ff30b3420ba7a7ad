"""training.distill + training.trainer + training.data on the tiny SDXL-layout pipeline (32 px, a few CPU steps)."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from studio.build import unet_config
from studio.recipes import recipe_plan
from studio.removal import build_student, name_map
from tests.conftest import TINY_ARCH
from training.data import load_items, nearest_bucket, to_pixels
from studio.train_config.distill import DistillConfig
from training.cli import parse_overrides
from training.distill import feature_pairs, main, run_distill
from studio.demo.shapes import export_imagefolder
from training.trainer import NonFiniteLossError, read_state


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(teacher, out, **overrides) -> DistillConfig:
    base = dict(teachers=[{"path": str(teacher), "weight": 1.0}], student="vega", buckets=[[32, 32]],
                dataset_count=16, steps=4, batch_size=2, lr=1e-3, checkpoint_every=2, keep_checkpoints=0,
                output_dir=str(out), validation_prompts=["a red circle on a blue background"], validation_steps=2)
    return DistillConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def four_steps(tiny_folder, tmp_path_factory):
    """An uninterrupted 4-step run with checkpoints at 2 and 4 and a validation at 4."""
    out = tmp_path_factory.mktemp("distill") / "run"
    cfg = tiny_config(tiny_folder, out, validate_every=4)
    seen = []
    result = run_distill(cfg, on_step=lambda step, total, info: seen.append((step, total)))
    return cfg, result, seen


# ---------------------------------------------------------------- runs

def test_four_step_run_writes_checkpoint_log_validation_and_student(four_steps):
    cfg, result, seen = four_steps
    out = result.checkpoint.parent
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    state = read_state(out / "checkpoint-4")
    assert state["step"] == 4 and state["config"] == cfg.to_dict() and len(state["history"]) == 4
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= \
        {p.name for p in (out / "checkpoint-4").iterdir()}
    import csv
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert list(rows[0])[:6] == ["step", "loss", "task", "out", "feat", "lr"] and len(rows) == 4
    assert rows[0]["val_student_all"] == "" and float(rows[3]["val_student_all"]) >= 0
    assert [float(r["loss"]) for r in rows] == [h["loss"] for h in result.history]
    assert (out / "validation" / "step-000004.png").exists() and "val_student_all" in result.history[-1]
    final = result.output
    assert (final / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert json.loads((final / "distill_config.json").read_text()) == cfg.to_dict()
    assert json.loads((final / "studio_model.json").read_text())["base"] == "tiny-sdxl"
    from diffusers import UNet2DConditionModel
    student = UNet2DConditionModel.from_pretrained(final / "unet")
    assert student.config.transformer_layers_per_block == [1, 1, 2]  # vega at depths (1, 2, 10)


def test_resume_from_step_2_replays_steps_3_and_4(four_steps, tmp_path):
    cfg, result, _ = four_steps
    src = result.checkpoint.parent
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(src / "checkpoint-2", out / "checkpoint-2")
    resumed = run_distill(tiny_config(cfg.teachers[0]["path"], out), resume_from="latest")
    assert [h["step"] for h in resumed.history] == [3, 4]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in result.history[2:]]
    assert read_state(out / "checkpoint-4")["history"][:2] == result.history[:2]


def test_zero_lambdas_contribute_nothing_on_an_imagefolder_with_buckets(tiny_folder, tmp_path):
    data = export_imagefolder(tmp_path / "data", 6, size=32)
    common = dict(steps=2, dataset=str(data), buckets=[[32, 32], [32, 16]], checkpoint_every=0)
    task_only = run_distill(tiny_config(tiny_folder, tmp_path / "a", lambda_out=0.0, lambda_feat=0.0, **common))
    assert all(h["loss"] == h["task"] and "out" not in h and "feat" not in h for h in task_only.history)
    no_feat = run_distill(tiny_config(tiny_folder, tmp_path / "b", lambda_out=1.0, lambda_feat=0.0, **common))
    assert all(h["loss"] == pytest.approx(h["task"] + h["out"], rel=1e-6) and "feat" not in h for h in no_feat.history)
    # same seed, same batches: the task term of step 1 (before any update) is identical with and without KD
    assert no_feat.history[0]["task"] == task_only.history[0]["task"]


def test_loss_decreases_on_a_fixed_batch(tiny_folder, tmp_path):
    result = run_distill(tiny_config(tiny_folder, tmp_path, steps=20, overfit_batch=True, checkpoint_every=0))
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tiny_folder, tmp_path):
    cfg = tiny_config(tiny_folder, tmp_path, steps=4, checkpoint_every=2)
    from training.distill import make_trainer
    trainer = make_trainer(cfg)

    def diverge(step, total, info):  # what a blown-up update does to the weights
        if step == 2:
            with torch.no_grad():
                trainer.task.model.conv_out.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 3.*checkpoint-2") as err:
        trainer.run(on_step=diverge)
    assert err.value.checkpoint == tmp_path / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    weights = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "final").exists()


def test_progressive_stage_with_ema_and_accumulation_resumes_across_the_stage(tiny_folder, tmp_path):
    stage = {"at_step": 2, "units": ["down_blocks.2.attentions.0.transformer_blocks.1"]}
    kw = dict(steps=4, checkpoint_every=1, ema_decay=0.9, grad_accum=2, gradient_checkpointing=True, stages=[stage],
              lr_scheduler="cosine", lr_warmup_steps=1)
    full = run_distill(tiny_config(tiny_folder, tmp_path / "full", **kw))
    config = json.loads((full.output / "unet" / "config.json").read_text())
    assert config["transformer_layers_per_block"] == [1, 1, [1, 2]]  # vega, then one more layer of attention 0
    names = json.loads((full.output / "name_map.json").read_text())
    assert names["down_blocks.2.attentions.1.transformer_blocks.1"] == "down_blocks.2.attentions.1.transformer_blocks.9"
    assert "down_blocks.2.attentions.0.transformer_blocks.1" not in names
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = run_distill(tiny_config(tiny_folder, tmp_path / "resumed", **kw), resume_from="latest")
    assert [h["loss"] for h in resumed.history] == [full.history[-1]["loss"]]


def test_should_stop_saves_a_checkpoint_and_exports_nothing(tiny_folder, tmp_path):
    done = []
    result = run_distill(tiny_config(tiny_folder, tmp_path, steps=5, checkpoint_every=0),
                         on_step=lambda step, total, info: done.append(step), should_stop=lambda: len(done) >= 1)
    assert result.stopped and result.steps_done == 1 and result.output is None
    assert result.checkpoint == tmp_path / "checkpoint-1" and read_state(result.checkpoint)["step"] == 1


# ---------------------------------------------------------------- feature pairs

def test_layer_pairs_of_the_vega_plan_are_every_kept_resnet_and_transformer_layer():
    cfg = unet_config(TINY_ARCH)  # transformer depths (1, 2, 10): vega keeps 1 of 2 and layers 0, 9 of 10
    names = name_map(cfg, recipe_plan("vega", cfg))
    same = lambda *ns: [(n, n) for n in ns]  # noqa: E731
    d2, u0, u1 = "down_blocks.2.attentions", "up_blocks.0.attentions", "up_blocks.1.attentions"
    expected = (
        same("down_blocks.0.resnets.0", "down_blocks.0.resnets.1", "down_blocks.1.resnets.0", "down_blocks.1.resnets.1",
             "down_blocks.1.attentions.0.transformer_blocks.0", "down_blocks.1.attentions.1.transformer_blocks.0",
             "down_blocks.2.resnets.0", "down_blocks.2.resnets.1")
        + [(f"{d2}.{a}.transformer_blocks.{k}", f"{d2}.{a}.transformer_blocks.{t}") for a in (0, 1)
           for k, t in ((0, 0), (1, 9))]
        + same("mid_block.resnets.0", "up_blocks.0.resnets.0", "up_blocks.0.resnets.1", "up_blocks.0.resnets.2")
        + [(f"{u0}.{a}.transformer_blocks.{k}", f"{u0}.{a}.transformer_blocks.{t}") for a in (0, 1, 2)
           for k, t in ((0, 0), (1, 9))]
        + same("up_blocks.1.resnets.0", "up_blocks.1.resnets.1", "up_blocks.1.resnets.2",
               *(f"{u1}.{a}.transformer_blocks.0" for a in (0, 1, 2)),
               "up_blocks.2.resnets.0", "up_blocks.2.resnets.1", "up_blocks.2.resnets.2"))
    assert feature_pairs(names, "layer") == expected
    assert feature_pairs(names, "block") == same("down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
                                                 "up_blocks.0", "up_blocks.1", "up_blocks.2")


def test_block_pairs_follow_a_removed_level():
    """BK-SDM-Tiny style: without the innermost level, student up_blocks.i is teacher up_blocks.i+1."""
    names = {"down_blocks.0.resnets.0": "down_blocks.0.resnets.0", "up_blocks.0.resnets.1": "up_blocks.1.resnets.2",
             "up_blocks.1.resnets.0": "up_blocks.2.resnets.0", "conv_in": "conv_in"}
    assert feature_pairs(names, "block") == [("down_blocks.0", "down_blocks.0"), ("up_blocks.0", "up_blocks.1"),
                                             ("up_blocks.1", "up_blocks.2")]


# ---------------------------------------------------------------- config, CLI, data

@pytest.mark.parametrize("field, value, message", [
    ("lr", -1e-4, "DistillConfig.lr"),
    ("student", "ssd-2b", "DistillConfig.student"),
    ("dataset", "/nonexistent/folder", "DistillConfig.dataset"),
    ("buckets", [[30, 32]], "DistillConfig.buckets"),
    ("mixed_precision", "fp8", "DistillConfig.mixed_precision"),
    ("feature_level", "sub_block", "DistillConfig.feature_level"),
    ("stages", [{"at_step": 9, "units": ["mid_block"]}], "DistillConfig.stages"),
])
def test_bad_config_raises_value_error_naming_the_field(tiny_folder, tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tiny_folder, tmp_path, **{field: value})


def test_missing_teacher_and_unknown_field_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="DistillConfig.teachers"):
        DistillConfig(teachers=[{"path": str(tmp_path)}])
    with pytest.raises(ValueError, match="unknown field"):
        DistillConfig.from_dict({"stepz": 3})


def test_toml_config_with_cli_overrides_prints_pairs(tiny_folder, tmp_path, capsys):
    toml = tmp_path / "cfg.toml"
    toml.write_text(f'student = "vega"\nsteps = 50\nbuckets = [[32, 32]]\ndataset_count = 4\nfeature_level = "block"\n'
                    f'output_dir = "{tmp_path / "out"}"\n[[teachers]]\npath = "{tiny_folder}"\nweight = 1.0\n')
    cfg = DistillConfig.load(toml, parse_overrides(["lr=2e-4"], ["--steps", "10", "--cache-latents", "false"]))
    assert (cfg.steps, cfg.lr, cfg.cache_latents, cfg.feature_level) == (10, 2e-4, False, "block")
    assert main(["--config", str(toml), "--set", "steps=3", "--print-pairs"]) == 0
    assert capsys.readouterr().out.splitlines()[3] == "mid_block <- mid_block"
    assert main(["--config", str(toml), "--lr", "-1"]) == 2
    assert "DistillConfig.lr" in capsys.readouterr().err


def test_buckets_and_pixels():
    buckets = [(32, 32), (64, 32), (32, 64)]
    assert [nearest_bucket(s, buckets) for s in ((100, 100), (300, 140), (90, 200))] == [0, 1, 2]
    items = load_items("demo", count=2, size=48)
    px = to_pixels(items[0].load(), (32, 16))
    assert px.shape == (3, 16, 32) and -1 <= px.min() and px.max() <= 1 and items[0].text.startswith("a ")
    assert not math.isnan(px.sum().item())


def test_caption_cache_on_disk_is_reused_memory_mapped_and_gives_the_same_batches(tiny_folder, tmp_path):
    """Item 8 of issue 14: captions are encoded once; with cache_dir the embeddings live in a file keyed by the text
    encoders and captions, and a second run reads that file instead of encoding again."""
    from diffusers import StableDiffusionXLPipeline

    from training.data import SDXLBatches

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_folder)
    items = load_items("demo", count=6, size=32)
    first = SDXLBatches(items, pipe, buckets=[(32, 32)], cache_text=True, cache_dir=str(tmp_path))
    files = list(tmp_path.glob("text-*.pt"))
    assert len(files) == 1 and len(first._text) == len({it.text for it in items})
    calls = []
    pipe.encode_prompt = lambda *a, **k: calls.append(a)  # a second encoding would fail loudly
    again = SDXLBatches(items, pipe, buckets=[(32, 32)], cache_text=True, cache_dir=str(tmp_path))
    assert calls == []
    a, b = (x.batch(SDXLBatches.generator(0, 1), 3) for x in (first, again))
    assert a["captions"] == b["captions"] and torch.equal(a["prompt_embeds"], b["prompt_embeds"])
    assert a["prompt_embeds"].dtype == torch.float32 and torch.equal(a["pooled"], b["pooled"])
    next(pipe.text_encoder.parameters()).data += 1  # other encoder weights: another cache file
    del pipe.encode_prompt
    SDXLBatches(items, pipe, buckets=[(32, 32)], cache_text=True, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("text-*.pt"))) == 2


def forward_macs(unet) -> int:
    """MACs of one batch-1 forward of a real UNet at its sample size (77 text tokens), counted by torch's
    FlopCounterMode while it runs on the CPU: independent of studio.blocks, which counts on the meta device. The
    math attention backend makes the score matmuls plain bmm calls that the counter sees (CPU flash attention has no
    FLOP formula)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg, g = unet.config, torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    text = torch.randn(1, 77, cfg.cross_attention_dim, generator=g)
    pooled = torch.randn(1, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim, generator=g)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        unet(x, torch.tensor([500]), text, added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.zeros(1, 6)})
    return counter.get_total_flops() // 2


def test_bench_reports_measured_steps_and_the_flop_floor_of_the_models_it_trained(tiny_folder, tmp_path):
    """The KD-vs-plain benchmark, checked against what the test measures itself: parameter counts of the teacher
    on disk and of the student its recipe makes, MACs of real forwards of both, and the wall time of the call
    (every timed step lies inside it)."""
    import time

    from diffusers import UNet2DConditionModel

    from training.distill_bench import bench

    teacher = UNet2DConditionModel.from_pretrained(tiny_folder / "unet").eval()
    student, _ = build_student(teacher, recipe_plan("vega", dict(teacher.config)))
    t0 = time.perf_counter()
    r = bench(str(tiny_folder), student="vega", batch_size=1, steps=3, out=str(tmp_path))
    wall = time.perf_counter() - t0
    assert r["teacher_params"] == sum(p.numel() for p in teacher.parameters())
    assert r["student_params"] == sum(p.numel() for p in student.parameters()) < r["teacher_params"]
    assert (r["teacher_macs"], r["student_macs"]) == (forward_macs(teacher), forward_macs(student.eval()))
    assert r["ratio_flop_bound"] == pytest.approx(1 + forward_macs(teacher) / (3 * forward_macs(student)))
    assert len(r["kd_steps_s"]) == len(r["plain_steps_s"]) == 3
    assert 0 < sum(r["kd_steps_s"]) + sum(r["plain_steps_s"]) < wall
    assert min(r["kd_steps_s"]) <= r["kd_step_s"] <= max(r["kd_steps_s"])
    assert r["pairs"] == len(feature_pairs(name_map(dict(teacher.config), recipe_plan("vega", dict(teacher.config)))))
