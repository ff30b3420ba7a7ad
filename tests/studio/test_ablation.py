"""Ablation studio core: compare full vs pruned generations, leave-one-out sweeps with an on-disk cache, export.

Tiny real pipelines from tests/conftest.py (32 px, depths [1, 2, 10]), 2 denoising steps, one torch thread.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from studio.ablation import (SWEEP_COLUMNS, AblationConfig, compare_ablation, config_plan, export_plan, plot_sweep,
                             psnr, removable_units, ssim, sweep)
from studio.ablation_cli import register
from studio.removal import RemovalPlan
from tests.conftest import make_tiny_pipeline

LAYER = "down_blocks.2.attentions.1.transformer_blocks.3"  # config-expressible (depth 10 -> 9 + name map)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(seed=0)


def tiny_config(**overrides) -> AblationConfig:
    return AblationConfig(**{"model": "tiny-base", "steps": 2, "seeds": (3,), **overrides})


def same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


class TestCompare:
    def test_removing_nothing_reproduces_the_full_image_exactly(self, pipe):
        cmp = compare_ablation(pipe, RemovalPlan(), tiny_config())
        assert same(cmp.full_images[0], cmp.ablated_images[0])
        assert cmp.ssim == [1.0] and cmp.psnr == [float("inf")]
        assert cmp.cost["delta_params"] == 0 and cmp.cost["delta_macs"] == 0 and cmp.cost["kind"] == "config"

    def test_runtime_ablation_and_config_removal_give_the_same_image(self, pipe):
        plan = RemovalPlan({LAYER})
        by_config = compare_ablation(pipe, plan, tiny_config())  # a built student in a pipeline view
        assert by_config.cost["kind"] == "config"
        result = sweep(pipe, tiny_config(), units=[LAYER], model_name="tiny-equivalence")  # ablate() in place
        assert result.rows[0]["ssim"] == pytest.approx(by_config.ssim[0], abs=1e-12)
        assert not same(by_config.full_images[0], by_config.ablated_images[0])

    def test_numbers_are_sane(self, pipe):
        plan = RemovalPlan({"mid_block.attentions.0"})  # runtime-only: the mid block keeps both resnets
        cmp = compare_ablation(pipe, plan, tiny_config(prompts=("a red circle on a blue background", "a star")))
        cost = cmp.cost
        layer_params = sum(p.numel() for p in pipe.unet.mid_block.attentions[0].parameters())
        assert cost["kind"] == "runtime" and cost["delta_params"] == layer_params
        assert cost["params"] == sum(p.numel() for p in pipe.unet.parameters())
        assert 0 < cost["delta_macs"] < cost["macs"]
        assert len(cmp.full_images) == len(cmp.ablated_images) == 2
        assert all(0 < s < 1 for s in cmp.ssim) and all(0 < p < 100 for p in cmp.psnr)
        assert cmp.latency_ratio > 0
        assert cmp.full_fidelity[0] in (0.0, 1 / 3, 2 / 3, 1.0) and cmp.full_fidelity[1] is None  # 2nd: no parse
        json.dumps(cmp.summary())

    def test_bad_plans_and_configs_raise_clear_errors(self, pipe):
        unet_config = dict(pipe.unet.config)
        with pytest.raises(ValueError, match="unknown unit 'down_blocks.1.foo'"):
            tiny_config(units=("down_blocks.1.foo",))
        with pytest.raises(ValueError, match="transformer layer 5 does not exist"):
            config_plan(tiny_config(units=("down_blocks.1.attentions.0.transformer_blocks.5",)), unet_config)
        with pytest.raises(ValueError, match="neither config-expressible .* nor skippable at run time"):
            config_plan(tiny_config(units=("up_blocks.1.resnets.0",)), unet_config)
        with pytest.raises(ValueError, match="AblationConfig.recipe='nope'"):
            tiny_config(recipe="nope")
        with pytest.raises(ValueError, match="AblationConfig.resolution"):
            tiny_config(resolution=36)
        with pytest.raises(ValueError, match="AblationConfig.prompts"):
            tiny_config(prompts=())
        with pytest.raises(ValueError, match="AblationConfig.seeds"):
            tiny_config(seeds=(-1,))
        assert config_plan(tiny_config(recipe="vega", units=(LAYER,)), unet_config).name == "vega+custom"


def test_image_distances():
    a = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    b = Image.fromarray(np.clip(np.asarray(a).astype(int) + 8, 0, 255).astype(np.uint8))
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == float("inf")
    assert 0 < ssim(a, b) < 1 and 25 < psnr(a, b) < 35


class TestSweep:
    def test_sweep_ranks_caches_and_exports(self, pipe, tmp_path):
        units = ["mid_block.attentions.0", LAYER, "down_blocks.0.resnets.1"]
        calls = []
        first = sweep(pipe, tiny_config(), units=units, model_name="tiny-sweep",
                      on_step=lambda s, n, info: calls.append((s, n)))
        assert first.computed == 3 and first.cached == 0 and not first.cancelled
        assert calls[-1] == (4 * 2, 4 * 2)  # (3 units + the full model) x 1 pair x 2 steps
        assert [r["rank"] for r in first.rows] == [1, 2, 3]
        per_param = [r["damage_per_mparam"] for r in first.rows]
        assert per_param == sorted(per_param) and sorted(r["unit"] for r in first.rows) == sorted(units)
        calls.clear()
        second = sweep(pipe, tiny_config(), units=units, model_name="tiny-sweep", on_step=lambda *a: calls.append(a))
        assert calls == [] and second.cached == 3 and second.computed == 0  # nothing generated
        assert second.rows == first.rows
        third = sweep(pipe, tiny_config(), units=units + ["mid_block.resnets.0"], model_name="tiny-sweep",
                      on_step=lambda s, n, info: calls.append((s, n)))
        assert third.computed == 1 and calls[-1] == (2, 2)  # the full model's images come from the cache too
        other = sweep(pipe, tiny_config(guidance=2.0), units=units[:1], model_name="tiny-sweep")
        assert other.computed == 1  # another guidance is another cache key
        csv = first.to_csv(tmp_path / "sweep.csv").read_text().splitlines()
        assert csv[0] == ",".join(SWEEP_COLUMNS) and len(csv) == 4
        assert plot_sweep(first, dict(pipe.unet.config)).axes

    def test_sweep_is_cancellable(self, pipe):
        result = sweep(pipe, tiny_config(seeds=(11,)), units=["mid_block.attentions.0", LAYER], model_name="tiny-stop",
                       should_stop=lambda: True)
        assert result.cancelled and result.rows == []

    def test_default_units(self, pipe):
        units = removable_units(pipe.unet.config)
        assert "mid_block.attentions.0" in units and LAYER in units
        assert "down_blocks.1.resnets.0" not in units  # 8 -> 16 channels: cannot be skipped
        assert not any(u.startswith("up_blocks") and ".resnets." in u for u in units)  # they consume skips
        assert len(units) == 70 + 1 + 7  # transformer layers, the mid attention, skippable resnets
        assert set(removable_units(pipe.unet.config, groups=True)) - set(units) >= {"mid_block",
                                                                                    "up_blocks.0.attentions.2"}


def test_exported_student_is_listed_and_loads(family):
    from studio.loading import ModelCache
    from studio.registry import get_spec, list_models

    cache = ModelCache()
    teacher = cache.get("tiny-base")
    plan = RemovalPlan({"mid_block.attentions.0", "mid_block.resnets.1"})  # UNetMidBlock2D (SSD-1B's mid block)
    out = export_plan(teacher, plan, "tiny-base-slim", teacher_name="tiny-base")
    assert "tiny-base-slim" in [s.name for s in list_models()] and get_spec("tiny-base-slim").base == "tiny-base"
    assert {"plan.json", "name_map.json", "README.md", "studio_model.json"} <= {p.name for p in out.iterdir()}
    student = cache.get("tiny-base-slim")
    assert student.text_encoder is teacher.text_encoder  # components shared with the base
    assert student.unet.config.mid_block_type == "UNetMidBlock2D"
    with pytest.raises(ValueError, match="is taken"):
        export_plan(teacher, plan, "tiny-base-slim", teacher_name="tiny-base")
    with pytest.raises(ValueError, match="runtime-only"):
        export_plan(teacher, RemovalPlan({"mid_block.attentions.0"}), "tiny-x", teacher_name="tiny-base")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_ablate_and_sweep(family, tmp_path, capsys):
    assert run_cli(["ablate", "--model", "tiny-base", "--remove", "mid_block.attentions.0", "--steps", "2",
                    "--out", str(tmp_path / "cmp"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "runtime" and report["delta_params"] > 0
    assert len(list((tmp_path / "cmp").glob("*.png"))) == 2
    assert run_cli(["sweep", "--model", "tiny-base", "--units", f"mid_block.attentions.0,{LAYER}", "--steps", "2",
                    "--csv", str(tmp_path / "s.csv"), "--heatmap", str(tmp_path / "s.png"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 2 and (tmp_path / "s.csv").is_file() and (tmp_path / "s.png").is_file()
