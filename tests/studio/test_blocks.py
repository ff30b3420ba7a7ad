"""Block map: params partition the model, MACs match the analytic SDXL count, hierarchy and chart."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from studio.blocks import block_map, count_params, format_table, plot_block_map, total, unet_layout
from studio.build import SDXLArch, unet_config
from studio.released import RELEASED_DIR, released_models, released_unet_config
from studio.removal_cli import register

TINY = unet_config(SDXLArch(block_out_channels=(8, 16, 16), head_dim=8, text_hidden=(16, 16),
                            projection_dim=16, addition_time_embed_dim=4, image_size=32))


def sdxl_config() -> dict:
    return released_unet_config("sdxl")


def transformer_layer_macs(tokens: int, dim: int, text_tokens: int, text_dim: int) -> int:
    """MACs of one SDXL transformer layer, by hand: self-attention (q, k, v, out projections + QK^T and AV),
    cross-attention (q, out on the image tokens; k, v on the text tokens; QK^T and AV) and the GEGLU feed-forward
    (dim -> 2 x 4 dim, 4 dim -> dim). Norms and biases are not MACs."""
    n, d, m, c = tokens, dim, text_tokens, text_dim
    self_attn = 4 * n * d * d + 2 * n * n * d
    cross_attn = 2 * n * d * d + 2 * m * c * d + 2 * n * m * d
    feed_forward = n * d * 8 * d + n * 4 * d * d
    return self_attn + cross_attn + feed_forward


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


@pytest.mark.parametrize("name", ["sdxl", "ssd-1b", "vega"])
def test_released_sdxl_family_counts_on_meta(name):
    """Block-map rows of the released configs: parameters as diffusers' own modules hold them, transformer-layer
    MACs as the formula above gives them at 1024² (32² latent tokens at the 1280-channel level)."""
    config = released_unet_config(name)
    rows = block_map(config, resolution=1024)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    assert total(rows) == sum(p.numel() for p in unet.parameters())
    by_unit = {r.unit: r for r in rows}
    for block in ("down_blocks.2", "mid_block", "up_blocks.0"):
        assert by_unit[block].params == sum(p.numel() for p in unet.get_submodule(block).parameters())
    assert by_unit["down_blocks.2"].resolution == 32 and by_unit["up_blocks.2"].resolution == 128
    layer = by_unit["down_blocks.2.attentions.0.transformer_blocks.0"]
    assert layer.macs == transformer_layer_macs(32 * 32, 1280, 77, config["cross_attention_dim"])
    assert by_unit["down_blocks.1.attentions.0.transformer_blocks.0"].macs == \
        transformer_layer_macs(64 * 64, 640, 77, config["cross_attention_dim"])


def test_sdxl_totals_match_the_published_figures():
    """SDXL base: 2,567,463,684 UNet parameters (the hub model card's 2.6 B, exact count from its config) and about
    3.381 TMACs per 1024² forward (SSD-1B paper's size comparison; the same count the FLOP counter gives)."""
    rows = block_map(sdxl_config(), resolution=1024)
    assert total(rows) == 2_567_463_684
    assert total(rows, "macs") == pytest.approx(3.381e12, rel=2e-3)


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
    assert run_cli(["blocks", "--unet-config", str(RELEASED_DIR / "sd-v1-4" / "unet" / "config.json"), "--resolution",
                    "512", "--depth", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == count_params(released_unet_config("sd-v1-4"))
    assert {r["unit"] for r in out["rows"]} >= {"mid_block", "up_blocks.3"}


@pytest.mark.parametrize("name", ["bk-sdm-base", "bk-sdm-small", "bk-sdm-tiny"])
def test_released_bk_sdm_configs_have_the_published_sizes(name):
    """BK-SDM (Kim et al. 2023, arXiv 2305.15798; nota-ai/bk-sdm-* unet/config.json): 579.4 M / 482.3 M / 323.4 M."""
    published = {"bk-sdm-base": 579_384_964, "bk-sdm-small": 482_346_884, "bk-sdm-tiny": 323_384_964}
    assert name in released_models()
    assert count_params(released_unet_config(name)) == published[name]
