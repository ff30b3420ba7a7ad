"""Layer removal: recipe parameter counts, released-config equality, weight transfer, export, run-time ablation."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from studio.blocks import count_params, meta_unet
from studio.build import SDXLArch, unet_config
from studio.recipes import RECIPES, recipe_plan
from studio.released import RELEASED_DIR, released_models, released_unet_config
from studio.removal import RemovalPlan, ablate, build_student, export_student, name_map, plan_kind, student_config
from studio.removal_cli import register

SDXL = released_unet_config("sdxl")
SD14 = released_unet_config("sd-v1-4")
TINY = unet_config(SDXLArch(block_out_channels=(8, 16, 16), head_dim=8, text_hidden=(16, 16),
                            projection_dim=16, addition_time_embed_dim=4, image_size=32))
TINY_SD1 = dict(SD14, block_out_channels=[8, 16, 16, 16], norm_num_groups=8, attention_head_dim=2,
                cross_attention_dim=32, sample_size=16)
RELEASED_STUDENTS = sorted(set(RECIPES) & set(released_models()))  # ssd-1b, vega, bk-sdm-base|small|tiny
KOALA_PUBLISHED = {"koala-700m": 782e6, "koala-1b": 1.16e9}  # KOALA (Lee et al. 2023): no released config committed


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def shapes(config: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in meta_unet(config).state_dict().items()}


def tiny_unet(config: dict = TINY, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()


def forward(unet: UNet2DConditionModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    cfg = unet.config
    size = cfg.sample_size // 2
    x = torch.randn(2, 4, size, size, generator=g)
    text = torch.randn(2, 7, cfg.cross_attention_dim, generator=g)
    added = None
    if cfg.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(2, cfg.projection_class_embeddings_input_dim - 6 * 4, generator=g),
                 "time_ids": torch.randn(2, 6, generator=g)}
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), text, added_cond_kwargs=added).sample


def teacher_of(name: str) -> dict:
    return SDXL if RECIPES[name].layout == "sdxl" else SD14


def test_every_released_student_has_a_recipe():
    assert RELEASED_STUDENTS == ["bk-sdm-base", "bk-sdm-small", "bk-sdm-tiny", "ssd-1b", "vega"]


@pytest.mark.parametrize("name", RELEASED_STUDENTS)
def test_recipes_reproduce_the_released_configs(name):
    """The recipe applied to the released teacher gives the released student: the same state-dict keys and shapes
    as assets/configs/<name>/unet/config.json (the hub repo's file), hence the same parameter count."""
    teacher, released = teacher_of(name), released_unet_config(name)
    plan = recipe_plan(name, teacher)
    assert plan_kind(teacher, plan) == "config"
    assert shapes(student_config(teacher, plan)) == shapes(released)
    assert count_params(student_config(teacher, plan)) == count_params(released) == RECIPES[name].reference_params


@pytest.mark.parametrize("name", sorted(KOALA_PUBLISHED))
def test_koala_recipes_match_the_published_sizes(name):
    params = count_params(student_config(SDXL, recipe_plan(name, SDXL)))
    assert params == RECIPES[name].reference_params
    assert abs(params - KOALA_PUBLISHED[name]) < 0.0015 * KOALA_PUBLISHED[name]


def test_reference_teachers():
    """The committed teacher configs build the published sizes (SDXL 2.567 B in 1680 tensors, SD 1.4 859.5 M)."""
    assert count_params(SDXL) == 2_567_463_684 and len(shapes(SDXL)) == 1680
    assert round(count_params(SD14) / 1e5) / 10 == 859.5


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.layout == "sdxl"])
def test_sdxl_recipes_apply_to_the_tiny_demo_layout(name):
    teacher = tiny_unet()
    student, names = build_student(teacher, recipe_plan(name, TINY))
    assert sum(p.numel() for p in student.parameters()) < count_params(TINY)
    source = teacher.state_dict()
    for key, value in student.state_dict().items():  # every kept layer is bit-identical to its teacher source
        prefix = max((p for p in names if key.startswith(p + ".")), key=len)
        assert torch.equal(value, source[names[prefix] + key[len(prefix):]]), key
    assert forward(student).shape == forward(teacher).shape


def test_wrong_architecture_and_bad_plans():
    with pytest.raises(ValueError, match="needs an SD1-layout UNet"):
        recipe_plan("bk-sdm-base", SDXL)
    with pytest.raises(ValueError, match="needs an SDXL-layout UNet"):
        recipe_plan("vega", SD14)
    with pytest.raises(ValueError, match="unknown recipe 'nope'; allowed: ssd-1b"):
        recipe_plan("nope", SDXL)
    with pytest.raises(ValueError, match=r"unknown unit 'down_blocks.1.foo'; allowed forms"):
        RemovalPlan({"down_blocks.1.foo"})
    bad = {
        "down_blocks.7.pairs.0": "no down_blocks.7",
        "down_blocks.1.attentions.0.transformer_blocks.2": "transformer layer 2 does not exist",
        "down_blocks.0.attentions.0": "the block has no attentions",
        "levels.1": "only the innermost level 'levels.2'",
    }
    for unit, message in bad.items():
        with pytest.raises(ValueError, match=message):
            plan_kind(SDXL, RemovalPlan({unit}))
    with pytest.raises(ValueError, match="every transformer layer of down_blocks.1.attentions.0"):
        plan_kind(SDXL, RemovalPlan({f"down_blocks.1.attentions.0.transformer_blocks.{k}" for k in (0, 1)}))
    with pytest.raises(ValueError, match="every layer of down_blocks.1"):
        plan_kind(SDXL, RemovalPlan({"down_blocks.1.pairs.0", "down_blocks.1.pairs.1"}))
    with pytest.raises(ValueError, match="neither config-expressible"):  # up resnets consume skips: no run-time skip
        plan_kind(SDXL, RemovalPlan({"up_blocks.1.pairs.1"}))


def test_removing_layer_3_of_10_is_depth_9_with_a_name_map():
    plan = RemovalPlan({"down_blocks.2.attentions.1.transformer_blocks.3"})
    cfg = student_config(SDXL, plan)
    assert cfg["transformer_layers_per_block"] == [1, 2, [10, 9]]
    assert cfg["reverse_transformer_layers_per_block"] == [[10, 10, 10], [2, 2, 2], 1]
    names = name_map(SDXL, plan)
    stack = "down_blocks.2.attentions.1.transformer_blocks."
    assert [names[f"{stack}{k}"] for k in range(9)] == [f"{stack}{k}" for k in (0, 1, 2, 4, 5, 6, 7, 8, 9)]
    assert names["down_blocks.2.attentions.1.proj_out"] == "down_blocks.2.attentions.1.proj_out"
    # diffusers ties the mid block's depth to the last down block's first attention: runtime only
    tied = RemovalPlan({"down_blocks.2.attentions.0.transformer_blocks.3"})
    assert plan_kind(SDXL, tied) == "runtime"
    with pytest.raises(ValueError, match="runtime-only"):
        student_config(SDXL, tied)


def test_removing_nothing_reproduces_the_teacher():
    teacher = tiny_unet()
    reference = forward(teacher)
    student, names = build_student(teacher, RemovalPlan())
    assert all(s == t for s, t in names.items())
    assert torch.equal(forward(student), reference)
    with ablate(teacher, RemovalPlan()):
        assert torch.equal(forward(teacher), reference)


@pytest.mark.parametrize("units", [
    {"down_blocks.2.attentions.1.transformer_blocks.3", "up_blocks.0.attentions.2.transformer_blocks.0"},
    {"mid_block.attentions.0", "mid_block.resnets.1"},
    {"mid_block"},
    "ssd-1b", "vega",
])
def test_runtime_ablation_equals_config_removal(units):
    teacher = tiny_unet()
    reference = forward(teacher)
    plan = recipe_plan(units, TINY) if isinstance(units, str) else RemovalPlan(units)
    student, _ = build_student(teacher, plan)
    with ablate(teacher, plan):
        ablated = forward(teacher)
    assert torch.equal(forward(student), ablated)
    assert not torch.equal(ablated, reference)
    assert torch.equal(forward(teacher), reference)  # forwards restored


def test_runtime_only_plan():
    teacher = tiny_unet()
    reference = forward(teacher)
    plan = RemovalPlan({"down_blocks.1.resnets.1", "up_blocks.1.attentions.0", "down_blocks.0.resnets.0"})
    assert plan_kind(TINY, plan) == "runtime"
    assert plan_kind(TINY, RemovalPlan({"mid_block.resnets.0", "mid_block.resnets.1"})) == "runtime"  # attention kept
    with pytest.raises(ValueError, match="runtime-only"):
        build_student(teacher, plan)
    with ablate(teacher, plan):
        assert not torch.equal(forward(teacher), reference)
    with pytest.raises(ValueError, match="cannot be skipped at run time"):
        with ablate(teacher, recipe_plan("koala-700m", TINY)):
            pass


def test_export_loads_with_plain_diffusers(tmp_path):
    teacher = tiny_unet()
    plan = recipe_plan("vega", TINY)
    student, names = build_student(teacher, plan)
    out = export_student(student, names, plan, tmp_path / "vega-tiny", teacher="tiny",
                         teacher_params=count_params(TINY))
    loaded = UNet2DConditionModel.from_pretrained(out).eval()
    saved = loaded.state_dict()
    assert saved.keys() == student.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in student.state_dict().items())
    # same weights, but safetensors' buffers are not 64-byte aligned: SIMD kernels may differ in the last ulp
    torch.testing.assert_close(forward(loaded), forward(student), rtol=0, atol=1e-5)
    assert (out / "diffusion_pytorch_model.safetensors").is_file() and "vega" in (out / "README.md").read_text()
    assert json.loads((out / "name_map.json").read_text()) == names
    assert RemovalPlan.from_dict(json.loads((out / "plan.json").read_text())) == plan


def test_bk_sdm_tiny_on_a_small_sd1_unet(tmp_path):
    teacher = tiny_unet(TINY_SD1)
    student, names = build_student(teacher, recipe_plan("bk-sdm-tiny", TINY_SD1))
    assert names["up_blocks.0.resnets.1"] == "up_blocks.1.resnets.2"  # BK-SDM: up blocks shift, keep pairs 0 and 2
    assert names["down_blocks.2.attentions.0.proj_in"] == "down_blocks.2.attentions.0.proj_in"
    assert student.mid_block is None and len(student.down_blocks) == 3
    assert forward(student).shape == forward(teacher).shape


def test_cli_prune_dry_run_and_export(tmp_path, capsys):
    assert run_cli(["prune", "--recipe", "ssd-1b", "--unet-config", str(RELEASED_DIR / "sdxl" / "unet" / "config.json"),
                    "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    released = released_unet_config("ssd-1b")
    assert report["params"] == count_params(released) and report["kind"] == "config"
    assert report["config"]["reverse_transformer_layers_per_block"] == released["reverse_transformer_layers_per_block"]
    assert run_cli(["prune", "--recipe", "bk-sdm-small", "--unet-config", "sd-v1-4", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == count_params(released_unet_config("bk-sdm-small"))
    tiny_unet().save_pretrained(tmp_path / "teacher")
    assert run_cli(["prune", "--remove", "mid_block", "--teacher", str(tmp_path / "teacher"),
                    "--out", str(tmp_path / "student"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert UNet2DConditionModel.from_pretrained(report["out"]).mid_block is None
    with pytest.raises(ValueError, match="runtime-only"):
        run_cli(["prune", "--remove", "down_blocks.1.resnets.1", "--teacher", str(tmp_path / "teacher"),
                 "--out", str(tmp_path / "x")])
