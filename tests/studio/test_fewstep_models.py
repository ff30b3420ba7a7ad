"""Few-step models in the studio core: the registry lists the released LCM relatives and the demo few-step models
with LCMScheduler and their cards' steps/CFG; an LCM-LoRA model is its base UNet with the LoRA fused (the base's
own pipeline untouched); beside another model a few-step model runs with its own card; the Layers tab's ablation
and the removal recipes take a few-step (LCM) student like any other UNet."""
from __future__ import annotations

import pytest
import torch

from studio.ablation import AblationConfig, compare_ablation, config_plan
from studio.compare import iter_side_by_side
from studio.generation import GenerateRequest, card_request
from studio.loading import ModelCache, Runtime
from studio.registry import ModelSpec, get_spec, list_models
from studio.removal import build_student

pytestmark = pytest.mark.usefixtures("one_thread")
needs_demo = pytest.mark.skipif("demo-lcm" not in {s.name for s in list_models()}, reason="demo-lcm not built")


def cpu_cache() -> ModelCache:
    return ModelCache(budget_bytes=1 << 40, runtime=Runtime(torch.device("cpu"), torch.float32))


def test_released_few_step_models_are_listed_with_the_lcm_scheduler_and_their_cards():
    rows = {s.name: s for s in list_models()}
    assert rows["lcm-lora-sdxl"].source == "latent-consistency/lcm-lora-sdxl" and rows["lcm-lora-sdxl"].lora
    assert rows["lcm-ssd-1b"].source == "latent-consistency/lcm-ssd-1b" and not rows["lcm-ssd-1b"].lora
    assert rows["vega-rt"].source == "segmind/Segmind-VegaRT" and rows["vega-rt"].base == "vega"
    for name, guidance in (("lcm-lora-sdxl", 1.0), ("lcm-ssd-1b", 8.0), ("vega-rt", 1.0)):
        assert (rows[name].scheduler, rows[name].default_steps, rows[name].default_guidance) == ("LCM", 4, guidance)
    assert not rows["sdxl"].few_step and rows["vega-rt"].few_step
    with pytest.raises(ValueError, match="a LoRA model needs the model it applies to"):
        ModelSpec("x", "a/b", lora=True)
    request = GenerateRequest(prompt="a red star", steps=30, guidance=5.0)
    assert card_request(rows["sdxl"], request) is request
    assert (card_request(rows["vega-rt"], request).scheduler, card_request(rows["vega-rt"], request).steps) == ("LCM", 4)


@needs_demo
def test_demo_lcm_lora_model_is_the_base_unet_with_the_lora_fused_and_the_base_untouched():
    cache = cpu_cache()
    teacher = cache.get("demo-teacher")
    before = {k: v.clone() for k, v in teacher.unet.state_dict().items()}
    fused = cache.get("demo-lcm-lora")
    assert fused.unet is not teacher.unet and fused.text_encoder is teacher.text_encoder  # shared parts
    moved = [k for k, v in fused.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert moved and all(torch.equal(v, before[k]) for k, v in teacher.unet.state_dict().items())
    assert not any("lora" in k for k in fused.unet.state_dict())  # fused, no adapter layers left


@needs_demo
@pytest.mark.parametrize("order", [["demo-teacher", "demo-lcm"], ["demo-lcm", "demo-teacher"]])
def test_beside_the_teacher_a_few_step_model_runs_with_its_own_card(order):
    request = GenerateRequest(prompt="a red circle on a blue background", steps=3, guidance=5.0, seed=1)
    results = {r.model: r for r in iter_side_by_side(cpu_cache(), order, request, warmup=False)}
    assert [results[m].error for m in order] == ["", ""]
    teacher, lcm = results["demo-teacher"].request, results["demo-lcm"].request
    assert (teacher.scheduler, teacher.steps) == ("Euler", 3)  # listed first or second: the request is its own
    spec = get_spec("demo-lcm")
    assert spec.scheduler == "TCD"  # its card: the deterministic consistency sampler (studio.schedulers)
    assert (lcm.scheduler, lcm.steps, lcm.guidance) == ("TCD", spec.default_steps, spec.default_guidance)
    assert "Sampler: TCD" in results["demo-lcm"].parameters[0]
    assert results["demo-lcm"].seed == results["demo-teacher"].seed


@needs_demo
def test_a_few_step_model_alone_runs_with_the_request():
    request = GenerateRequest(prompt="a red circle on a blue background", steps=2, guidance=1.0, seed=1,
                              scheduler="LCM")
    (result,) = iter_side_by_side(cpu_cache(), ["demo-lcm"], request, warmup=False)
    assert not result.error and (result.request.steps, result.request.scheduler) == (2, "LCM")  # the user's steps


@needs_demo
def test_the_cards_skipping_schedule_goes_with_either_consistency_sampler():
    """A few-step card's original_inference_steps reaches LCM and TCD alike (they pick their timesteps from it), and
    stays out of an ordinary sampler's config."""
    from studio.fewstep import load_fewstep_pipeline, recommended_settings

    rec = recommended_settings(get_spec("demo-lcm-lora").source)
    assert rec["scheduler"] == "LCM" and rec["scheduler_config"]["original_inference_steps"] == 10
    teacher = cpu_cache().get("demo-teacher")
    for name in ("LCM", "TCD"):
        pipe = load_fewstep_pipeline(get_spec("demo-lcm-lora").source, teacher, scheduler=name)
        assert type(pipe.scheduler).__name__ == f"{name}Scheduler"
        pipe.scheduler.set_timesteps(4)
        steps = pipe.scheduler.timesteps.tolist()
        assert len(steps) == 4 and steps[0] == 999 and all((t + 1) % 100 == 0 for t in steps), steps  # 10-step schedule
        # (LCM's default 50-step schedule gives 999, 759, 499, 259)
    euler = load_fewstep_pipeline(get_spec("demo-lcm-lora").source, teacher, scheduler="Euler")
    assert "original_inference_steps" not in euler.scheduler.config


@needs_demo
def test_layers_ablation_and_removal_recipes_take_a_few_step_student():
    pipe = cpu_cache().get("demo-lcm")
    assert pipe.unet.config.time_cond_proj_dim == 256  # the LCM's guidance input
    config = AblationConfig(model="demo-lcm", units=("mid_block",), steps=2, seeds=(0,))
    cmp = compare_ablation(pipe, config_plan(config, pipe.unet.config), config)
    assert cmp.cost["delta_params"] > 0 and len(cmp.ablated_images) == 1  # parameters saved
    assert cmp.psnr[0] < 99  # removing the mid block changes the image
    layer = AblationConfig(model="demo-lcm", units=("down_blocks.2.attentions.0.transformer_blocks.3",))
    student, names = build_student(pipe.unet, config_plan(layer, pipe.unet.config))  # what distillation starts from
    assert student.config.time_cond_proj_dim == 256 and names["time_embedding"] == "time_embedding"
    assert torch.equal(student.time_embedding.cond_proj.weight, pipe.unet.time_embedding.cond_proj.weight)
    assert student.config.transformer_layers_per_block[2] == [3, 4]  # one layer fewer in its first attention


def test_the_job_runner_finds_what_a_few_step_run_exported(tmp_path):
    from studio.jobs.kinds import final_output

    lora_run, full_run = tmp_path / "lora", tmp_path / "full"
    assert final_output("fewstep", lora_run) == [] and final_output("fewstep", full_run) == []
    lora_run.mkdir()
    for name in ("pytorch_lora_weights.safetensors", "fewstep_config.json"):
        (lora_run / name).write_bytes(b"x")
    assert [p.name for p in final_output("fewstep", lora_run)] == ["pytorch_lora_weights.safetensors",
                                                                   "fewstep_config.json"]
    (full_run / "final").mkdir(parents=True)
    assert final_output("fewstep", full_run) == [full_run / "final"]
