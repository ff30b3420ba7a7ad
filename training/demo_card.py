"""The demo teacher's model card (README.md), written from its ``training_config.json``; the evaluation section is a
marker block that the demo-family report fills.

    write_model_card("assets/demo/teacher")
"""
from __future__ import annotations

import json
from pathlib import Path

from studio.demo import shapes

REPORT_START = "<!-- report:{} (python -m training.demo_family report writes this block) -->"
REPORT_END = "<!-- /report -->"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def write_model_card(model_dir: str | Path, command: str | None = None) -> Path:
    """README.md for a saved teacher from its ``training_config.json``; the evaluation section is a marker block that
    ``python -m training.demo_family report`` fills."""
    d = Path(model_dir)
    info = json.loads((d / "training_config.json").read_text())
    cfg, arch, params = info["config"], info["config"]["arch"], info["params"]
    command = command or info.get("command", "python -m training.demo_family teacher --out " + str(d))
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and "checkpoint-" not in str(f))
    lines = [
        "# Demo family teacher: a tiny SDXL-architecture text-to-image model",
        "",
        "Trained from scratch on CPU on the project's synthetic shapes data (`training/shapes.py`), so that every",
        "feature of the studio works offline. It draws prompts of the form `a <colour> <shape> on a <colour>",
        "background` at 64x64 px. Load it with plain diffusers:",
        "",
        "```python",
        "from diffusers import StableDiffusionXLPipeline",
        "pipe = StableDiffusionXLPipeline.from_pretrained(\"assets/demo/teacher\")",
        f"image = pipe(\"a red star on a blue background\", num_inference_steps={cfg['num_inference_steps']}, "
        f"guidance_scale={cfg['guidance_scale']}).images[0]",
        "```",
        "",
        f"Recommended: **{cfg['num_inference_steps']} steps, guidance_scale {cfg['guidance_scale']}** "
        "(the pipeline's own defaults are 50 steps and guidance 5.0, which also work; height/width default to 64).",
        "Vocabulary: shapes " + ", ".join(shapes.SHAPES) + "; colours " + ", ".join(shapes.COLOURS) + ".",
        "",
        "## Architecture",
        "",
        "SDXL's layout exactly (`studio/build.py`), only narrower: UNet `DownBlock2D` + `CrossAttnDownBlock2D` x2,",
        f"transformer depths {arch['transformer_layers_per_block']}, {arch['layers_per_block']} resnets per block, "
        "cross-attention mid block, `text_time` added conditioning",
        f"(original size / crop / target size ids, {arch['addition_time_embed_dim']} dims each), two CLIP text "
        "encoders (penultimate hidden states concatenated, pooled projection of encoder 2), AutoencoderKL with "
        f"{2 ** (len(arch['vae_channels']) - 1)}x downsampling to {arch['latent_channels']}-channel latents "
        f"(64 px -> 16x16), EulerDiscreteScheduler with SDXL's settings, epsilon prediction.",
        "",
        "| component | widths | parameters |",
        "|---|---|---|",
        f"| unet | channels {arch['block_out_channels']}, head dim {arch['head_dim']}, cross-attn dim "
        f"{sum(arch['text_hidden'])} | {params['unet']:,} |",
        f"| vae | channels {arch['vae_channels']}, scaling_factor {info['vae_scaling_factor']:.4f} | "
        f"{params['vae']:,} |",
        f"| text_encoder (CLIPTextModel) | hidden {arch['text_hidden'][0]}, {arch['text_layers'][0]} layers | "
        f"{params['text_encoder']:,} |",
        f"| text_encoder_2 (CLIPTextModelWithProjection) | hidden {arch['text_hidden'][1]}, "
        f"{arch['text_layers'][1]} layers, projection {arch['projection_dim']} | {params['text_encoder_2']:,} |",
        f"| total | | {sum(params.values()):,} |",
        "",
        f"Weights: fp32 safetensors, {size / 2 ** 20:.1f} MiB on disk in all. Tokenizer (`tokenizer`, `tokenizer_2`): "
        "the project's byte-level CLIP BPE (`studio/demo/tokenizer.py`), one token per demo word.",
        "",
        "## Data",
        "",
        f"{cfg['num_images']:,} images of the synthetic `train` split (seed {cfg['seed']}): "
        f"{len(shapes.SHAPES)} shapes x {len(shapes.COLOURS)} colours x 7 other background colours = "
        f"{len(shapes.ALL_COMBOS)} combinations, minus {len(shapes.HELDOUT)} held-out combinations "
        "(`studio.demo.shapes.HELDOUT`) that the model never saw; random size (38-60 % of the side) and position.",
        "",
        "## Training",
        "",
        "```",
        command,
        "```",
        "",
        f"Stage 1: VAE, {cfg['vae_steps']} steps, batch {cfg['vae_batch_size']} of {cfg['vae_crop']} px crops, "
        f"AdamW lr {cfg['vae_lr']}, MSE + {cfg['kl_weight']} KL; scaling_factor = 1 / std of the latents.",
        f"Stage 2: UNet + both text encoders, {info['steps_done']} of {cfg['steps']} steps, batch "
        f"{cfg['batch_size']}, AdamW lr {cfg['lr']} (warmup {cfg['warmup_steps']}, cosine to "
        f"{cfg['final_lr_ratio']}x), weight decay {cfg['weight_decay']}, epsilon loss with Min-SNR-"
        f"{cfg['snr_gamma']} weighting, offset noise {cfg['noise_offset']}, {_pct(cfg['caption_dropout'])} caption "
        f"dropout to the zero embedding (the pipeline's unconditional input), EMA {cfg['ema_decay']}.",
        "",
        f"Wall time on the project's 2-core CPU machine (shared with other jobs while it ran), torch "
        f"{info['torch']}, {info['threads']} thread(s): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in info["seconds"].items()) + ".",
        "The loss per step is in `loss.csv`; the full config in `training_config.json`.",
        "",
        "## Evaluation",
        "",
    ]
    lines += [f"{REPORT_START.format('teacher')}", "Not evaluated yet: run `python -m training.demo_family report`.",
              REPORT_END, ""]
    path = d / "README.md"
    path.write_text("\n".join(lines))
    return path
