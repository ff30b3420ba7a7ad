"""The real-shape proof: released configs match the published parameter counts; the smoke machinery (configs ->
random weights -> a hub cache laid out like the real repos -> ModelCache -> full pipeline) on tiny configs in the
default suite; the real Vega through it as an opt-in slow test (RUN_SLOW=1, a few minutes, ~4 GB of RAM)."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import CLIPTokenizer

from studio.build import SDXLArch, unet_config
from studio.paths import REPO_ROOT
from studio.registry import CONFIGS_DIR, get_spec
from studio.smoke import VOCAB_SIZE, _meta_module, build_cache, measure, write_tokenizer

PUBLISHED = {  # parameters: SDXL/SSD-1B/Vega UNets (model cards: 2.6 B, 1.3 B, 0.745 B; exact counts from the
    # configs), CLIP ViT-L/14 text, OpenCLIP bigG text with projection, SDXL VAE
    "unet": {"sdxl": 2_567_463_684, "ssd-1b": 1_331_334_404, "vega": 745_225_604},
    "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863,
}


def params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("model", ["sdxl", "ssd-1b", "vega"])
def test_released_configs_have_the_published_sizes(model):
    folder = CONFIGS_DIR / model
    assert params(_meta_module("unet", folder / "unet")) == PUBLISHED["unet"][model]
    for part in ("text_encoder", "text_encoder_2", "vae"):
        assert params(_meta_module(part, folder / part)) == PUBLISHED[part]
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"


def test_synthetic_tokenizer_has_clips_size_and_length(tmp_path):
    write_tokenizer(tmp_path, CONFIGS_DIR / "sdxl" / "tokenizer_2")
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(tok) == VOCAB_SIZE and tok.model_max_length == 77 and tok.pad_token == "!"
    ids = tok("an astronaut riding a horse", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == VOCAB_SIZE - 2 and max(ids) < VOCAB_SIZE


@pytest.fixture
def tiny_configs(tmp_path):
    """assets/configs/ with the three models shrunk (same layout, same tokenizer configs, CLIP's vocabulary)."""
    root = tmp_path / "configs"
    depths = {"sdxl": (1, 2, 3), "ssd-1b": (1, 2, 2), "vega": (1, 1, 1)}
    for model, depth in depths.items():
        shutil.copytree(CONFIGS_DIR / model, root / model)
        arch = SDXLArch(block_out_channels=(8, 16, 16), transformer_layers_per_block=depth, head_dim=8,
                        text_hidden=(16, 16), projection_dim=16, addition_time_embed_dim=4, image_size=64)
        (root / model / "unet" / "config.json").write_text(json.dumps(unet_config(arch)))
        for part, hidden in (("text_encoder", 16), ("text_encoder_2", 16)):
            file = root / model / part / "config.json"
            config = json.loads(file.read_text())
            config.update(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=1,
                          num_attention_heads=2, projection_dim=16)
            file.write_text(json.dumps(config))
        file = root / model / "vae" / "config.json"
        vae = json.loads(file.read_text())
        vae.update(block_out_channels=[8, 8, 8], norm_num_groups=8, down_block_types=vae["down_block_types"][:3],
                   up_block_types=vae["up_block_types"][:3], layers_per_block=1, sample_size=64)
        file.write_text(json.dumps(vae))
    return root


def test_smoke_machinery_on_tiny_configs(tiny_configs, tmp_path, monkeypatch):
    """vega alone through the hub path: resident = its UNet + SDXL's text encoders and VAE; the SDXL repo's UNet is
    a placeholder of its real size that is never read; the plain fp32 files are placeholders in a bf16 run."""
    import huggingface_hub.constants as constants

    hub = tmp_path / "hub"
    hub.mkdir()
    snapshots = build_cache(hub, ["vega"], torch.bfloat16, configs=tiny_configs)
    assert set(snapshots) == {"sdxl", "vega"}
    sdxl_unet = snapshots["sdxl"] / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    assert sdxl_unet.is_symlink() and sdxl_unet.stat().st_size > 0
    assert sdxl_unet.resolve().stat().st_blocks * 512 < sdxl_unet.stat().st_size  # sparse: never written
    assert (snapshots["vega"] / "unet" / "diffusion_pytorch_model.fp16.safetensors").resolve().stat().st_blocks > 0
    assert (hub / "models--segmind--Segmind-Vega" / "refs" / "main").read_text() == snapshots["vega"].name
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    report = measure("vega", torch.bfloat16, size=64, steps=1, device="cpu")
    parts = report["component_bytes"]
    assert report["resident_bytes"] == sum(parts.values())
    sdxl_unet = params(_meta_module("unet", tiny_configs / "sdxl" / "unet"))
    assert report["params"]["unet"] in report["unets_in_memory"]  # (other tests' UNets may be alive here too)
    assert sdxl_unet != report["params"]["unet"] and sdxl_unet not in report["unets_in_memory"]
    assert report["params"]["text_encoder"] > VOCAB_SIZE * 16 and report["image_std"] > 0
    assert report["repo"] == get_spec("vega").source and report["dtype"] == "bfloat16"


@pytest.mark.slow
def test_real_vega_alone_holds_no_sdxl_unet(tmp_path):
    """python -m studio smoke on the real Vega shapes (bf16 on the CPU): 745,225,604 UNet parameters, the two real
    text encoders and the VAE, resident bytes exactly those, and SDXL's UNet (in the cache, 5 GB) not in memory."""
    out = subprocess.run([sys.executable, "-m", "studio", "smoke", "--model", "vega", "--dtype", "bf16", "--size",
                          "64", "--steps", "1", "--json", "--workdir", str(tmp_path)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    (report,) = json.loads(out.stdout)
    assert report["params"]["unet"] == PUBLISHED["unet"]["vega"]
    assert all(report["params"][p] == PUBLISHED[p] for p in ("text_encoder", "text_encoder_2", "vae"))
    assert report["unets_in_memory"] == [PUBLISHED["unet"]["vega"]]
    shared = sum(PUBLISHED[p] for p in ("text_encoder", "text_encoder_2", "vae")) * 2  # bf16: 2 bytes per value
    assert report["resident_bytes"] - PUBLISHED["unet"]["vega"] * 2 - shared < 4096  # + CLIP's position ids
    assert report["image_std"] > 0
