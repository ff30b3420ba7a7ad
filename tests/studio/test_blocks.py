"""Block map: params partition the model, MACs match the analytic SDXL count, hierarchy and chart."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from studio.blocks import block_map, count_params, format_table, plot_block_map, total, unet_layout
from studio.build import SDXLArch, unet_config
from studio.removal_cli import register

CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "configs"
TINY = unet_config(SDXLArch(block_out_channels=(8, 16, 16), head_dim=8, text_hidden=(16, 16),
                            projection_dim=16, addition_time_embed_dim=4, image_size=32))


def sdxl_config() -> dict:
    return json.loads((CONFIGS / "sdxl" / "unet" / "config.json").read_text())


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_params_sum_to_the_real_models_total():
    torch.manual_seed(0)
    real = sum(p.numel() for p in UNet2DConditionModel(**TINY).parameters())
    rows = block_map(TINY, vae_scale_factor=4)
    assert total(rows) == count_params(TINY) == real


def test_sdxl_reference_counts_on_meta():
    rows = block_map(sdxl_config(), resolution=1024)
    assert total(rows) == 2_567_463_684
    assert total(rows, "macs") == pytest.approx(3.381e12, rel=2e-3)  # performance.md: 3.381 TMACs at 1024²
    by_unit = {r.unit: r for r in rows}
    assert by_unit["down_blocks.2"].resolution == 32 and by_unit["up_blocks.2"].resolution == 128
    assert round(by_unit["down_blocks.2"].params / 1e5) / 10 == 757.4  # architectures.md, by part
    assert round(by_unit["mid_block"].params / 1e5) / 10 == 413.1
    layer = by_unit["down_blocks.2.attentions.0.transformer_blocks.0"]
    assert layer.macs == pytest.approx(33.5e9, rel=0.01)  # 1280-ch layer at 32²


def test_children_partition_each_block():
    rows = block_map(TINY, vae_scale_factor=4)
    for block in (r for r in rows if r.depth == 0 and r.kind != "stem"):
        children = [r for r in rows if r.depth == 1 and r.parent == block.unit]
        assert sum(r.params for r in children) == block.params
        assert sum(r.macs for r in children) == block.macs
    kinds = {r.kind for r in rows}
    assert {"resnet", "attention", "transformer_layer", "attn1", "attn2", "ff", "downsampler", "upsampler"} <= kinds
    layers = [r for r in rows if r.kind == "transformer_layer"]
    assert len(layers) == 2 * 2 + 2 * 10 + 10 + 3 * 10 + 3 * 2  # down, mid, up stacks of depths [1, 2, 10]


def test_layout_and_bad_resolution():
    layout = {b.name: b for b in unet_layout(sdxl_config())}
    assert layout["down_blocks.2"].depths == (10, 10) and layout["up_blocks.0"].resnets == 3
    assert layout["down_blocks.1"].skippable_resnets == (False, True)
    with pytest.raises(ValueError, match="resolution=100"):
        block_map(sdxl_config(), resolution=100)


def test_table_and_figure():
    rows = block_map(TINY, vae_scale_factor=4)
    text = format_table(rows, max_depth=1)
    assert "down_blocks.2.attentions.1" in text and "total" in text
    fig = plot_block_map(rows, compare=[r for r in rows if r.unit != "mid_block"])
    assert len(fig.axes) == 2 and fig.axes[0].get_legend() is None and fig.axes[1].get_legend() is not None


def test_cli_blocks_json(capsys):
    assert run_cli(["blocks", "--unet-config", str(CONFIGS / "sd-v1-4" / "unet" / "config.json"), "--resolution", "512",
                    "--depth", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 859_520_964 and {r["unit"] for r in out["rows"]} >= {"mid_block", "up_blocks.3"}
