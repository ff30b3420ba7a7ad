"""training.fewstep on the tiny SDXL-layout pipeline (32 px, a few CPU steps): the consistency loss vanishes when the
student is its target on a zero-length solver step, one step moves only the trainable weights, resume replays the
next step exactly (EMA target included), the LCM-LoRA loads in plain diffusers and changes the 4-step image, the
conditional model listens to its condition, and bad configs fail with messages naming the field."""
import json

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionXLPipeline, TCDScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file

from studio.fewstep import ADAPTER_FOLDERS, control_image
from training.data import demo_items
from training.fewstep import (FewStepConfig, FewStepModules, consistency_distance, load_fewstep_pipeline, low_res,
                              main, make_trainer)
from training.fewstep_eval import psnr, ssim
from studio.train_config.lora import LORA_WEIGHT_NAME

PROMPT = "a red circle on a blue background"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def items():
    return demo_items(8, size=32)


def tiny_config(base, out, **overrides) -> FewStepConfig:
    cfg = dict(teacher=str(base), resolution=32, steps=3, batch_size=2, lr=1e-2, checkpoint_every=2,
               dataset_count=8, validation_prompts=[], output_dir=str(out))
    return FewStepConfig(**{**cfg, **overrides})


def snapshot(module) -> dict:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def text_of(batch) -> dict:
    return {k: batch[k] for k in ("prompt_embeds", "pooled", "time_ids")}


@pytest.mark.parametrize("kind", [dict(student="full"), dict(student="lora"),
                                  dict(condition="sr", objective="codi", condition_size=8, adapter="t2i-adapter",
                                       codi_solver="student")])  # the conditional student as its own CFG solver
def test_consistency_loss_is_zero_when_student_is_target_on_a_zero_length_solver_step(tiny_folder, items, tmp_path,
                                                                                    kind):
    task = make_trainer(tiny_config(tiny_folder, tmp_path, rank=2, target_decay=0.9, **kind), items=items).task
    for p in task.model.parameters():  # a student that differs from its teacher (LoRA B and cond_proj start at 0)
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    task.target.load_state_dict(task.model.state_dict())  # student = target
    batch = task._batch(0, 0)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(batch["latents"].shape, generator=gen)
    start = task.solver_timesteps[torch.tensor([12, 40])]
    scales = torch.tensor([3.0, 7.0])
    with torch.no_grad():
        pred, target, _ = task.consistency_pair(task.model, batch["latents"], noise, start, start, text_of(batch),
                                                batch.get("control"), scales=scales)
        assert consistency_distance(pred, target) < 1e-6 and consistency_distance(pred, target, "l2") < 1e-9
        pred, target, _ = task.consistency_pair(task.model, batch["latents"], noise, start, start - task.skip,
                                                text_of(batch), batch.get("control"), scales=scales)
    assert consistency_distance(pred, target) > 1e-4  # a real solver step: the untrained student is inconsistent


def test_lora_teacher_is_the_base_unet_with_adapters_off(tiny_folder, items, tmp_path):
    task = make_trainer(tiny_config(tiny_folder, tmp_path, rank=2), items=items).task
    assert task.shared_teacher and task.teacher is None
    for n, p in task.model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    batch = task._batch(0, 0)
    z, t = torch.randn(batch["latents"].shape), torch.tensor([999, 499])
    base = FewStepModules(StableDiffusionXLPipeline.from_pretrained(tiny_folder).unet)
    scales = torch.tensor([5.0, 5.0])
    with torch.no_grad():
        got = task._teacher_output(z, t, text_of(batch), None, scales)
        c = base(z, t, text_of(batch))
        u = base(z, t, {k: (v if k == "time_ids" else torch.zeros_like(v)) for k, v in text_of(batch).items()})
        student = task.model(z, t, text_of(batch))
    torch.testing.assert_close(got, u + 5.0 * (c - u), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(student, c, atol=1e-4)  # adapters are back on afterwards


@pytest.mark.parametrize("kind", [dict(student="full", target_decay=0.9),
                                  dict(student="lora", rank=2, target_decay=0.0),
                                  dict(condition="sr", objective="codi", rank=2, condition_size=8),
                                  dict(condition="sr", objective="codi", rank=2, condition_size=8,
                                       adapter="t2i-adapter")])
def test_one_step_changes_only_the_trainable_parameters(tiny_folder, items, tmp_path, kind):
    trainer = make_trainer(tiny_config(tiny_folder, tmp_path, steps=1, **kind), items=items)
    task = trainer.task
    trainer.prepare()
    before, teacher_before = snapshot(task.model), snapshot(task.pipe.unet) if task.teacher else None
    trainer.train_step()
    after = snapshot(task.model)
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    frozen = set(after) - trainable
    assert trainable and (not frozen if kind.get("student") == "full" else frozen)  # full: the whole UNet trains
    moved = {n for n in after if not torch.equal(before[n], after[n])}
    assert moved and moved <= trainable
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    if kind.get("condition"):
        assert any(n.startswith("adapter.") for n in moved) and any("lora_" in n for n in moved)
        assert all(n.startswith("adapter.") or "lora_" in n for n in trainable)
    if teacher_before is not None:  # the full student's separate teacher stays frozen
        assert all(torch.equal(teacher_before[n], p) for n, p in task.pipe.unet.named_parameters())


@pytest.mark.parametrize("kind", [dict(student="full", target_decay=0.9),
                                  dict(condition="sr", objective="codi", rank=2, condition_size=8, target_decay=0.5),
                                  dict(condition="sr", objective="codi", rank=2, condition_size=8, target_decay=0.5,
                                       adapter="t2i-adapter", codi_solver="student", guidance_min=1.0,
                                       guidance_max=2.0)])
def test_resume_replays_the_next_step_exactly(tiny_folder, items, tmp_path, kind):
    full = make_trainer(tiny_config(tiny_folder, tmp_path / "a", **kind), items=items)
    result = full.run()
    resumed = make_trainer(tiny_config(tiny_folder, tmp_path / "a", **kind), items=items)
    again = resumed.run(resume_from=tmp_path / "a" / "checkpoint-2")
    assert again.history[0]["step"] == 3 and again.history[0]["loss"] == result.history[2]["loss"]
    for module in ("model", "target"):
        a, b = snapshot(getattr(full.task, module)), snapshot(getattr(resumed.task, module))
        assert all(torch.equal(a[n], b[n]) for n in a), module


def render(pipe, steps=4, **kwargs):
    out = pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(3), output_type="np",
               height=32, width=32, **kwargs)
    return out.images[0]


def test_lcm_lora_loads_in_plain_diffusers_and_changes_the_four_step_image(tiny_folder, items, tmp_path):
    result = make_trainer(tiny_config(tiny_folder, tmp_path, rank=2, target_decay=0.0), items=items).run()
    file = result.output / LORA_WEIGHT_NAME
    card = json.loads((result.output / "fewstep_config.json").read_text())
    assert card["recommended"] == {"scheduler": "LCM", "scheduler_config": {"original_inference_steps": 50},
                                   "steps": 4, "guidance": 1.0}
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_folder)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    base = render(pipe, guidance_scale=1.0)
    pipe.load_lora_weights(str(file))
    loaded = [n for n, _ in pipe.unet.named_parameters() if "lora_" in n]
    assert len(loaded) == len(load_file(file))  # every adapter of every layer type arrives (attention and convs)
    with_lora = render(pipe, guidance_scale=1.0)
    assert np.abs(with_lora - base).max() > 1e-3
    pipe.set_adapters(pipe.get_active_adapters(), adapter_weights=[0.0])
    np.testing.assert_allclose(render(pipe, guidance_scale=1.0), base, atol=1e-5)


def test_full_student_folder_loads_as_a_unet_with_a_guidance_input(tiny_folder, items, tmp_path):
    result = make_trainer(tiny_config(tiny_folder, tmp_path, student="full", inference_guidance=6.0,
                                      inference_scheduler="TCD"), items=items).run()
    spec = json.loads((result.output / "studio_model.json").read_text())
    assert spec["scheduler"] == "TCD" and spec["default_steps"] == 4 and spec["default_guidance"] == 6.0
    assert spec["scheduler_config"] == {"original_inference_steps": 50}
    assert spec["base"] == str(tiny_folder)
    assert UNet2DConditionModel.load_config(result.output / "unet")["time_cond_proj_dim"] == 256
    weights = load_file(result.output / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float16}  # save_dtype fp16
    pipe = load_fewstep_pipeline(result.output, StableDiffusionXLPipeline.from_pretrained(tiny_folder))
    assert isinstance(pipe.scheduler, TCDScheduler) and pipe.scheduler.config.original_inference_steps == 50
    a, b = render(pipe, guidance_scale=2.0), render(pipe, guidance_scale=8.0)
    assert np.abs(a - b).max() > 1e-4  # the guidance scale reaches the UNet through its embedding
    np.testing.assert_array_equal(a, render(pipe, guidance_scale=2.0))  # TCD at the pipelines' eta 0: deterministic
    lcm = load_fewstep_pipeline(result.output, StableDiffusionXLPipeline.from_pretrained(tiny_folder), scheduler="LCM")
    assert isinstance(lcm.scheduler, LCMScheduler) and lcm.scheduler.config.original_inference_steps == 50
    assert np.abs(render(lcm, guidance_scale=2.0) - a).max() > 1e-4  # LCM re-noises with fresh noise: not the same


@pytest.mark.parametrize("adapter, pipeline", [("controlnet", "StableDiffusionXLControlNetPipeline"),
                                               ("t2i-adapter", "StableDiffusionXLAdapterPipeline")])
def test_conditional_model_output_depends_on_the_condition_image(tiny_folder, items, tmp_path, adapter, pipeline):
    result = make_trainer(tiny_config(tiny_folder, tmp_path, condition="sr", objective="codi", rank=2, adapter=adapter,
                                      condition_size=8, steps=4, target_decay=0.0, lr=0.05), items=items).run()
    spec = json.loads((result.output / "studio_model.json").read_text())
    assert spec["pipeline"] == pipeline and spec["condition"]["size"] == 8
    assert (result.output / ADAPTER_FOLDERS[adapter]).is_dir()
    pipe = load_fewstep_pipeline(result.output, StableDiffusionXLPipeline.from_pretrained(tiny_folder))
    assert type(pipe).__name__ == pipeline
    red, blue = (low_res(Image.new("RGB", (32, 32), c), 32, 8) for c in ((220, 30, 30), (30, 60, 220)))
    a, a2, b = (render(pipe, image=im, guidance_scale=1.0) for im in (red, red, blue))
    np.testing.assert_array_equal(a, a2)
    assert np.abs(a - b).max() > 1e-3
    # training feeds the adapter exactly what this pipeline prepares from the condition image
    if adapter == "controlnet":
        prepared = pipe.control_image_processor.preprocess([red, blue], height=32, width=32)
    else:
        from diffusers.pipelines.t2i_adapter.pipeline_stable_diffusion_xl_adapter import _preprocess_adapter_image

        prepared = _preprocess_adapter_image([red, blue], 32, 32)
    torch.testing.assert_close(control_image([red, blue], 32), prepared)


def test_two_stage_order_distils_a_task_trained_conditional_model(tiny_folder, items, tmp_path):
    first = make_trainer(tiny_config(tiny_folder, tmp_path / "task", condition="sr", objective="task", rank=2,
                                     condition_size=8, steps=2), items=items).run()
    trainer = make_trainer(tiny_config(tiny_folder, tmp_path / "lcd", condition="sr", objective="lcd", rank=2,
                                       condition_size=8, steps=1, init_from=str(first.output)), items=items)
    task = trainer.task
    teacher = snapshot(task.teacher)
    assert all(torch.equal(teacher[n], p) for n, p in task.model.named_parameters())  # starts as its teacher
    trainer.prepare()
    trainer.train_step()
    assert all(torch.equal(teacher[n], p) for n, p in task.teacher.named_parameters())  # the teacher stays frozen
    assert any(not torch.equal(teacher[n], p) for n, p in task.model.named_parameters())


@pytest.mark.parametrize("overrides, field", [
    (dict(steps=0), "steps"),
    (dict(num_ddim_timesteps=1), "num_ddim_timesteps"),
    (dict(num_ddim_timesteps=5000), "num_ddim_timesteps"),
    (dict(num_ddim_timesteps=8, inference_steps=10), "inference_steps"),
    (dict(guidance_min=6.0, guidance_max=4.0), "guidance_min/guidance_max"),
    (dict(guidance_min=0.5), "guidance_min/guidance_max"),
    (dict(teacher="no/such/model"), "teacher"),
    (dict(teacher=""), "teacher"),
    (dict(student="half"), "student"),
    (dict(objective="codi"), "objective"),
    (dict(condition="sr", objective="lcd"), "init_from"),
    (dict(condition="sr", student="full", objective="codi"), "student"),
    (dict(target_decay=1.0), "target_decay"),
    (dict(loss="l1"), "loss"),
    (dict(inference_scheduler="Euler"), "inference_scheduler"),
    (dict(condition="sr", objective="codi", adapter="lora"), "adapter"),
    (dict(condition="sr", objective="codi", codi_solver="teacher"), "codi_solver"),
])
def test_bad_configs_fail_with_the_field_name(tiny_folder, tmp_path, overrides, field):
    with pytest.raises(ValueError, match=f"FewStepConfig.{field}"):
        tiny_config(tiny_folder, tmp_path, **overrides)


def test_cli_refuses_a_bad_config_with_one_error_line(tiny_folder, tmp_path, capsys):
    assert main(["--teacher", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: FewStepConfig.teacher")


def test_psnr_and_ssim_rank_noisier_copies_lower():
    rng = np.random.default_rng(0)
    truth = np.full((32, 32, 3), 40, np.uint8)
    truth[8:24, 8:24] = (220, 30, 30)
    light, heavy = (np.clip(truth + rng.normal(0, s, truth.shape), 0, 255).astype(np.uint8) for s in (5, 25))
    assert psnr(truth, truth) == 99.0 and ssim(truth, truth) == pytest.approx(1.0)
    assert psnr(heavy, truth) < psnr(light, truth) < 99.0 and 18 < psnr(heavy, truth) < 24
    assert ssim(heavy, truth) < ssim(light, truth) < 0.99


@pytest.mark.parametrize("model, published", [("sdxl", 197e6), ("ssd-1b", 105e6)])
def test_lcm_lora_targets_give_the_published_lcm_lora_sizes_on_the_released_configs(model, published):
    """Rank 64 on FewStepConfig's default targets, on the released UNet config (meta device, no weights): the
    parameter counts of latent-consistency/lcm-lora-sdxl (197 M) and lcm-lora-ssd-1b (105 M)."""
    from peft import LoraConfig

    from studio.paths import ASSETS_DIR
    from studio.train_config.fewstep import LCM_LORA_TARGETS

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(ASSETS_DIR / "configs" / model / "unet"))
        unet.add_adapter(LoraConfig(r=64, lora_alpha=64, target_modules=LCM_LORA_TARGETS))
    lora = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    assert abs(lora - published) / published < 0.005


def test_report_only_one_part_replaces_that_part_and_keeps_the_other(tmp_path):
    """``report --only t2i``: the fresh text-to-image keys, training costs and run record replace the old ones; the
    super-resolution part, its training cost and its run record (here an old report without ``runs``) stay."""
    from training.fewstep_cards import sr_table, t2i_table, write_cards
    from training.fewstep_eval import merge_report

    def run(cmd, load):
        return {"n": 96, "threads": 1, "torch": "x", "command": cmd, "seconds": 1.0, "loadavg": {"start": [load],
                                                                                                  "end": [load]}}

    def t2i(score):
        return {"teacher@20": {"all": score, "guidance": 5.0}, "ssd@20": {"all": score, "guidance": 5.0},
                "teacher ordinary": {}, "ssd ordinary": {}, "lcm": {"4": {"all": score, "guidance": 2.0}}}

    sr = {"n": 96, "rows": {"VAE round trip": {"psnr": 30.0, "ssim": 0.9, "all": 0.8}}}
    old = run("old full", 3.0) | {"t2i": t2i(0.5), "sr": sr, "latency": {}, "params": {"teacher_unet": 10, "lcm": 5},
                                  "training": {"lcm": {"steps": 800}, "sr": {"steps": 300}}}
    new = {"t2i": t2i(0.75), "sr": {}, "latency": {}, "params": {"teacher_unet": 10, "lcm": 6},
           "training": {"lcm": {"steps": 1200}}, "runs": {"t2i": run("report --only t2i", 7.0)}}
    merged = merge_report(old, new, "t2i")
    assert merged["t2i"]["lcm"]["4"]["all"] == 0.75 and merged["sr"] == sr and merged["params"]["lcm"] == 6
    assert merged["training"] == {"lcm": {"steps": 1200}, "sr": {"steps": 300}}
    assert merged["runs"]["t2i"]["command"] == "report --only t2i" and merged["runs"]["sr"]["command"] == "old full"
    assert "`report --only t2i`" in t2i_table(merged) and "75.0 %" in t2i_table(merged)
    assert "`old full`" in sr_table(merged) and "load average 3.0" in sr_table(merged)
    card = tmp_path / "card.md"
    card.write_text("head\n<!-- fewstep-report:sr -->\nstale\n<!-- /fewstep-report:sr -->\ntail\n")
    assert write_cards(merged | {"t2i": {}}, {"t2i": [card], "sr": [card]}) == [card]
    text = card.read_text()
    assert "stale" not in text and "`old full`" in text and text.startswith("head\n") and text.endswith("tail\n")


def test_t2i_table_names_each_rows_sampler_and_the_loras_own_controls():
    """A student on its card's sampler (TCD) gets its rows under that name, its LCM-sampler rows beside them, and each
    LoRA's control row (its base, no LoRA, the LoRA's own sampler) sits under the LoRA's base."""
    from training.fewstep_cards import t2i_table

    def res(score, sampler, guidance=1.0):
        return {"all": score, "guidance": guidance, "sampler": sampler}

    t2i = {"teacher@20": res(0.9, "Euler", 5.0), "ssd@20": res(0.875, "Euler", 5.0), "teacher ordinary": {},
           "ssd ordinary": {}, "lcm": {"4": res(0.844, "TCD", 5.0)}, "lcm LCM sampler": {"4": res(0.792, "LCM", 5.0)},
           "lcm_lora": {"4": res(0.865, "LCM")}, "lcm_lora control": {"4": res(0.771, "LCM")},
           "ssd_lcm_lora control": {"4": res(0.646, "LCM")}}
    run = {"n": 96, "threads": 1, "command": "report", "loadavg": {"start": [1.0], "end": [1.0]}}
    table = t2i_table({"t2i": t2i, "latency": {}, "params": {}, "runs": {"t2i": run}})
    assert "| demo-lcm (full LCM student) | TCD | 4 | 5 | 84.4 % | -5.6 |" in table
    assert "| demo-lcm (full LCM student), LCM's own sampler | LCM | 4 | 5 | 79.2 % |" in table
    assert "| demo-teacher + demo-lcm-lora | LCM | 4 | 1 | 86.5 % | -3.5 |" in table
    assert "| demo-teacher, no LoRA (control) | LCM | 4 | 1 | 77.1 % |" in table
    assert "| demo-ssd, no LoRA (control) | LCM | 4 | 1 | 64.6 % |" in table
