"""Train the demo family's teacher: a tiny SDXL-architecture pipeline on the synthetic shapes data, CPU only.

    python -m training.demo_family teacher --out assets/demo/teacher --steps 1800 --minutes 40 --eval 200

Stage 1 trains the AutoencoderKL briefly on the synthetic train split (64 px -> 16x16x4 latents) and sets its
``scaling_factor`` to 1 / std of the latents. Stage 2 caches the latents and trains the UNet together with both
CLIP text encoders on the epsilon-prediction loss (DDPM forward process of the pipeline's own noise schedule, as in
diffusers' ``train_text_to_image_sdxl.py``), with Min-SNR-gamma loss weighting (Hang et al. 2023, arXiv:2303.09556),
offset noise (so the sampler's start noise does not fix the background colour), an EMA of the weights and 10 %
caption dropout to the *zero* embedding, which is what ``StableDiffusionXLPipeline`` uses as the unconditional
input (``force_zeros_for_empty_prompt``). The result is saved with ``save_pretrained`` (safetensors) together with
``training_config.json``, ``loss.csv`` and, when ``--eval`` is given, ``eval.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionXLPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

from studio.build import SDXLArch, build_sdxl_pipeline
from studio.tokenizer import build_tokenizer
from training import synthetic

# config

TEACHER_ARCH = SDXLArch(
    block_out_channels=(32, 48, 48), transformer_layers_per_block=(1, 2, 10), layers_per_block=2, head_dim=16,
    norm_num_groups=8, text_hidden=(64, 64), text_layers=(2, 2), text_heads=4, projection_dim=64,
    addition_time_embed_dim=16, vae_channels=(16, 32, 32), latent_channels=4, image_size=64)

TINY_ARCH = SDXLArch(
    block_out_channels=(8, 16, 16), head_dim=8, norm_num_groups=4, text_hidden=(16, 16), text_layers=(2, 2),
    text_heads=2, projection_dim=16, addition_time_embed_dim=4, vae_channels=(8, 8), image_size=32)


@dataclass(frozen=True)
class TeacherConfig:
    """What to train; the run is a pure function of these fields (plus the thread count)."""

    arch: SDXLArch = TEACHER_ARCH  # pipeline widths (SDXL layout)
    seed: int = 0  # seeds data order, init, noise
    num_images: int = 8192  # synthetic train-split images drawn (sample indices 0..num_images-1)
    vae_steps: int = 600  # stage 1 optimisation steps
    vae_batch_size: int = 16
    vae_crop: int = 32  # stage 1 trains on random square crops of this side (convolutional, 4x cheaper); 0 = full
    vae_lr: float = 3e-3
    kl_weight: float = 1e-6  # weight of the KL term (summed over latent elements) in the VAE loss
    steps: int = 4000  # stage 2 (UNet + text encoders) optimisation steps (a --minutes cap may stop it first)
    batch_size: int = 16
    lr: float = 1e-3  # peak AdamW learning rate, cosine decay to lr * final_lr_ratio
    warmup_steps: int = 50
    final_lr_ratio: float = 0.05
    weight_decay: float = 1e-2
    train_text_encoders: bool = True  # train both CLIP encoders jointly with the UNet
    caption_dropout: float = 0.1  # fraction of captions replaced by the zero (unconditional) embedding
    noise_offset: float = 0.1  # std of a per-(sample, channel) constant added to the training noise
    snr_gamma: float = 5.0  # Min-SNR-gamma weighting; 0 disables it
    ema_decay: float = 0.999  # 0 disables the EMA
    max_grad_norm: float = 1.0
    guidance_scale: float = 5.0  # recommended CFG scale (recorded in the model card)
    num_inference_steps: int = 20  # recommended sampler steps

    def __post_init__(self):
        positive = ("num_images", "vae_batch_size", "batch_size", "num_inference_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TeacherConfig.{name} must be >= 1; got {getattr(self, name)}")
        if self.vae_crop and not (0 < self.vae_crop <= self.arch.image_size and
                                  self.vae_crop % self.arch.vae_scale_factor == 0):
            raise ValueError(f"TeacherConfig.vae_crop must be 0 or a multiple of {self.arch.vae_scale_factor} in "
                             f"(0, {self.arch.image_size}]; got {self.vae_crop}")
        for name in ("vae_steps", "steps", "warmup_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"TeacherConfig.{name} must be >= 0; got {getattr(self, name)}")
        for name in ("vae_lr", "lr"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"TeacherConfig.{name} must be in (0, 1]; got {getattr(self, name)}")
        for name in ("caption_dropout", "final_lr_ratio", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TeacherConfig.{name} must be in [0, 1); got {getattr(self, name)}")
        for name in ("kl_weight", "weight_decay", "noise_offset", "snr_gamma", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"TeacherConfig.{name} must be >= 0; got {getattr(self, name)}")
        if self.guidance_scale < 1:
            raise ValueError(f"TeacherConfig.guidance_scale must be >= 1; got {self.guidance_scale}")

    @classmethod
    def tiny(cls, **overrides) -> TeacherConfig:
        """A seconds-long preset for tests: 32 px images, toy widths, a handful of steps."""
        base = dict(arch=TINY_ARCH, num_images=64, vae_steps=3, vae_batch_size=8, vae_crop=16, steps=3, batch_size=8,
                    warmup_steps=0, ema_decay=0.0)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TeacherConfig:
        arch = SDXLArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["arch"].items()})
        return cls(**{**d, "arch": arch})


@dataclass
class TrainResult:
    """What a run produced."""

    pipe: StableDiffusionXLPipeline
    losses: list[float]  # stage 2 loss per step
    vae_losses: list[float]
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    steps_done: int = 0


# helpers

def demo_tokenizer():
    """The demo family's CLIP tokenizer: each word of ``synthetic.DEMO_WORDS`` is one token."""
    return build_tokenizer(list(synthetic.DEMO_WORDS))


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_images(cfg: TeacherConfig) -> tuple[torch.Tensor, list[str]]:
    """Train-split images as a float tensor (N, 3, H, W) in [-1, 1] plus their captions."""
    items = synthetic.samples(synthetic.SyntheticConfig(seed=cfg.seed, size=cfg.arch.image_size,
                                                        count=cfg.num_images, split="train"))
    pixels = torch.from_numpy(synthetic.image_array(items)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return pixels, [s.text for s in items]


def time_ids(arch: SDXLArch, batch: int) -> torch.Tensor:
    """SDXL's add_time_ids: original size + crop top-left + target size, as the pipeline builds them."""
    s = arch.image_size
    return torch.tensor([[s, s, 0, 0, s, s]], dtype=torch.float32).repeat(batch, 1)


def encode_captions(pipe: StableDiffusionXLPipeline, captions: list[str], drop: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and pooled embeddings through the pipeline's own ``encode_prompt``; ``drop`` rows become zeros."""
    embeds, _, pooled, _ = pipe.encode_prompt(captions, device=torch.device("cpu"),
                                              do_classifier_free_guidance=False)
    keep = (~drop).float()
    return embeds * keep[:, None, None], pooled * keep[:, None]


class _Clock:
    """Wall-clock budget shared by both stages; ``None`` minutes = unlimited."""

    def __init__(self, minutes: float | None):
        self.start = time.time()
        self.limit = None if minutes is None else minutes * 60

    def out(self) -> bool:
        return self.limit is not None and time.time() - self.start > self.limit


# stage 1: VAE

def train_vae(pipe: StableDiffusionXLPipeline, pixels: torch.Tensor, cfg: TeacherConfig, gen: torch.Generator,
              log, clock: _Clock) -> list[float]:
    """Reconstruction (MSE) + KL training of ``pipe.vae`` on ``pixels``."""
    vae = pipe.vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(50, cfg.vae_steps // 10),
                          num_training_steps=max(cfg.vae_steps, 1))
    losses = []
    for step in range(cfg.vae_steps):
        idx = torch.randint(len(pixels), (cfg.vae_batch_size,), generator=gen)
        x = pixels[idx]
        if cfg.vae_crop and cfg.vae_crop < x.shape[-1]:
            i, j = torch.randint(x.shape[-1] - cfg.vae_crop + 1, (2,), generator=gen).tolist()
            x = x[..., i:i + cfg.vae_crop, j:j + cfg.vae_crop]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        log("vae", step, loss.item(), sched.get_last_lr()[0])
        if clock.out():
            break
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def encode_latents(pipe: StableDiffusionXLPipeline, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior means of ``pixels``; sets the VAE's ``scaling_factor`` to 1/std and returns scaled latents."""
    lat = torch.cat([pipe.vae.encode(pixels[i:i + batch]).latent_dist.mean for i in range(0, len(pixels), batch)])
    scale = float(1.0 / lat.std())
    pipe.vae.register_to_config(scaling_factor=scale)
    return lat * scale


# stage 2: UNet + text encoders

def trainable_modules(pipe: StableDiffusionXLPipeline, cfg: TeacherConfig) -> list[torch.nn.Module]:
    mods = [pipe.unet]
    if cfg.train_text_encoders:
        mods += [pipe.text_encoder, pipe.text_encoder_2]
    return mods


def diffusion_loss(pipe: StableDiffusionXLPipeline, noise_sched: DDPMScheduler, latents: torch.Tensor,
                   captions: list[str], cfg: TeacherConfig, gen: torch.Generator) -> torch.Tensor:
    """Min-SNR-weighted epsilon-prediction loss of one batch (SDXL conditioning, caption dropout, offset noise)."""
    b = len(latents)
    noise = torch.randn(latents.shape, generator=gen)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=gen)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,), generator=gen)
    noisy = noise_sched.add_noise(latents, noise, t)
    drop = torch.rand(b, generator=gen) < cfg.caption_dropout
    embeds, pooled = encode_captions(pipe, captions, drop)
    pred = pipe.unet(noisy, t, embeds, added_cond_kwargs={"text_embeds": pooled,
                                                          "time_ids": time_ids(cfg.arch, b)}).sample
    if not cfg.snr_gamma:
        return F.mse_loss(pred, noise)
    snr = compute_snr(noise_sched, t)
    weight = torch.clamp(snr, max=cfg.snr_gamma) / snr  # epsilon target: min(SNR, gamma) / SNR
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


def train_teacher(cfg: TeacherConfig, out_dir: str | Path | None = None, *, minutes: float | None = None,
                  log_every: int = 10, checkpoint_every: int = 0, verbose: bool = True) -> TrainResult:
    """Run both stages; save the pipeline, config and loss CSV to ``out_dir`` when given.

    Args:
        cfg (`TeacherConfig`): what to train.
        out_dir (`str` or `Path`, *optional*): where to ``save_pretrained`` the pipeline and write the logs.
        minutes (`float`, *optional*): wall-clock cap for both stages. When the machine is too slow to finish
            ``cfg.steps`` in time, stage 2's learning-rate schedule follows wall time instead of steps (so it still
            anneals) and training stops at the cap; such a run is not bit-reproducible. Without it, runs are.
        log_every (`int`, defaults to 10): print cadence in steps (the CSV has every step).
        checkpoint_every (`int`, defaults to 0): also save the (EMA) pipeline to ``out_dir/checkpoint-<step>``
            every this many stage 2 steps, to evaluate a run while it trains; 0 = never.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    clock = _Clock(minutes)
    out = None if out_dir is None else Path(out_dir)
    rows: list[tuple] = []

    def log(stage, step, loss, lr):
        rows.append((stage, step, f"{loss:.6f}", f"{lr:.3e}", f"{time.time() - clock.start:.1f}"))
        if verbose and step % log_every == 0:
            print(f"[{stage}] step {step} loss {loss:.4f} lr {lr:.2e} t {time.time() - clock.start:.0f}s",
                  flush=True)

    t0 = time.time()
    pixels, captions = load_images(cfg)
    pipe = build_sdxl_pipeline(cfg.arch, demo_tokenizer(), seed=cfg.seed)
    pipe.set_progress_bar_config(disable=True)
    seconds = {"data": time.time() - t0}

    t0 = time.time()
    vae_losses = train_vae(pipe, pixels, cfg, gen, log, clock)
    latents = encode_latents(pipe, pixels)
    seconds["vae"] = time.time() - t0

    t0 = time.time()
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    mods = trainable_modules(pipe, cfg)
    for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        m.requires_grad_(m in mods).train(m in mods)
    params = [p for m in mods for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    stage2_start = time.time()
    budget = None if clock.limit is None else max(1.0, clock.limit - (stage2_start - clock.start))

    def progress(s: int) -> float:
        """Fraction of stage 2 done: by steps, or by wall time when a budget is set and binds first."""
        by_steps = s / max(1, cfg.steps)
        return by_steps if budget is None else max(by_steps, (time.time() - stage2_start) / budget)

    def lr_factor(s: int) -> float:  # linear warmup, then cosine to final_lr_ratio
        if s < cfg.warmup_steps:
            return (s + 1) / (cfg.warmup_steps + 1)
        p = min(1.0, (progress(s) * cfg.steps - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * max(0.0, p)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True) if cfg.ema_decay else None
    losses = []
    step = 0
    for step in range(cfg.steps):
        idx = torch.randint(len(latents), (cfg.batch_size,), generator=gen)
        loss = diffusion_loss(pipe, noise_sched, latents[idx], [captions[i] for i in idx.tolist()], cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(params)
        losses.append(loss.item())
        log("unet", step, loss.item(), sched.get_last_lr()[0])
        if out is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < cfg.steps:
            if ema is not None:
                ema.store(params)
                ema.copy_to(params)
            pipe.save_pretrained(out / f"checkpoint-{step + 1}", safe_serialization=True)
            if ema is not None:
                ema.restore(params)
        if budget is not None and progress(step + 1) >= 1.0:
            print(f"time budget of {minutes} min reached after {step + 1}/{cfg.steps} steps", flush=True)
            break
    if ema is not None:
        ema.copy_to(params)
    for m in mods:
        m.eval().requires_grad_(False)
    seconds["unet"] = time.time() - t0
    seconds["total"] = time.time() - clock.start
    result = TrainResult(pipe, losses, vae_losses, seconds, steps_done=len(losses))
    if out is not None:
        save_teacher(result, cfg, out, rows)
    return result


def save_teacher(result: TrainResult, cfg: TeacherConfig, out: Path, rows: list[tuple]) -> None:
    """``save_pretrained`` (safetensors) + ``training_config.json`` + ``loss.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    result.pipe.save_pretrained(out, safe_serialization=True)
    info = {"command": "python -m training.demo_family " + " ".join(sys.argv[1:]),
            "config": cfg.to_dict(), "steps_done": result.steps_done, "seconds": result.seconds,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "vae_scaling_factor": result.pipe.vae.config.scaling_factor,
            "params": {name: count_params(getattr(result.pipe, name))
                       for name in ("unet", "vae", "text_encoder", "text_encoder_2")}}
    (out / "training_config.json").write_text(json.dumps(info, indent=2) + "\n")
    with open(out / "loss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("stage", "step", "loss", "lr", "seconds"))
        w.writerows(rows)


# evaluation

def eval_prompts(n: int, split: str, *, seed: int = 1234) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs: combos drawn from ``split`` without repeats until exhausted."""
    combos = list(synthetic.split_combos(split))
    rng = np.random.default_rng(seed)
    order = []
    while len(order) < n:
        order += [combos[i] for i in rng.permutation(len(combos))]
    return [(synthetic.caption(*c), seed + i) for i, c in enumerate(order[:n])]


@torch.no_grad()
def evaluate_pipeline(pipe: StableDiffusionXLPipeline, prompts: list[tuple[str, int]], *, steps: int = 20,
                      guidance_scale: float = 5.0, batch: int = 8) -> dict:
    """Generate each (prompt, seed) and score it with ``studio.evaluator``; returns accuracies and timing."""
    from studio.evaluator import evaluate_batch

    images, t0 = [], time.time()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gens = [torch.Generator().manual_seed(s) for _, s in chunk]
        images += pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=gens).images
    report = evaluate_batch(images, [p for p, _ in prompts])
    report["seconds_per_image"] = (time.time() - t0) / len(prompts)
    report["steps"], report["guidance_scale"] = steps, guidance_scale
    return report, images


def measure_latency(pipe: StableDiffusionXLPipeline, *, steps: int = 20, guidance_scale: float = 5.0,
                    repeats: int = 5) -> dict:
    """Seconds for one 64-px image (batch 1, CFG on): min and median of ``repeats`` runs after a warm-up."""
    prompt = synthetic.caption("star", "red", "blue")
    pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale)
    times = []
    for _ in range(repeats):
        t = time.time()
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale)
        times.append(time.time() - t)
    return {"min_s": min(times), "median_s": float(np.median(times)), "runs": times}


def evaluate_teacher(model_dir: str | Path, n: int, *, steps: int = 20, guidance_scale: float = 5.0,
                     heldout_n: int | None = None) -> dict:
    """Train-distribution and held-out accuracies of a saved teacher plus its 20-step latency; writes eval.json."""
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    train_report, train_images = evaluate_pipeline(pipe, eval_prompts(n, "train"), steps=steps,
                                                   guidance_scale=guidance_scale)
    held_report, held_images = evaluate_pipeline(pipe, eval_prompts(heldout_n or 2 * len(synthetic.HELDOUT),
                                                                    "heldout"),
                                                 steps=steps, guidance_scale=guidance_scale)
    result = {"train": train_report, "heldout": held_report,
              "latency": measure_latency(pipe, steps=steps, guidance_scale=guidance_scale),
              "threads": torch.get_num_threads()}
    for name in ("train", "heldout"):
        result[name].pop("per_item", None)
    Path(model_dir, "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result, train_images + held_images


def save_grid(images, path: str | Path, cols: int = 8, scale: int = 2) -> None:
    """Tile PIL images into one PNG (nearest-neighbour upscaled by ``scale``)."""
    from PIL import Image

    w, h = images[0].size
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    grid.resize((cols * w * scale, rows * h * scale), Image.NEAREST).save(path)


# model card

def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def write_model_card(model_dir: str | Path, command: str | None = None) -> Path:
    """README.md for a saved teacher from its ``training_config.json`` and ``eval.json`` (if present)."""
    d = Path(model_dir)
    info = json.loads((d / "training_config.json").read_text())
    ev = json.loads((d / "eval.json").read_text()) if (d / "eval.json").is_file() else None
    cfg, arch, params = info["config"], info["config"]["arch"], info["params"]
    command = command or info.get("command", "python -m training.demo_family teacher --out " + str(d))
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and "checkpoint-" not in str(f))
    lines = [
        "# Demo family teacher: a tiny SDXL-architecture text-to-image model",
        "",
        "Trained from scratch on CPU on the project's synthetic shapes data (`training/synthetic.py`), so that every",
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
        "Vocabulary: shapes " + ", ".join(synthetic.SHAPES) + "; colours " + ", ".join(synthetic.COLOURS) + ".",
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
        "the project's byte-level CLIP BPE (`studio/tokenizer.py`), one token per demo word.",
        "",
        "## Data",
        "",
        f"{cfg['num_images']:,} images of the synthetic `train` split (seed {cfg['seed']}): "
        f"{len(synthetic.SHAPES)} shapes x {len(synthetic.COLOURS)} colours x 7 other background colours = "
        f"{len(synthetic.ALL_COMBOS)} combinations, minus {len(synthetic.HELDOUT)} held-out combinations "
        "(`synthetic.HELDOUT`) that the model never saw; random size (38-60 % of the side) and position.",
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
    if ev is None:
        lines.append("Not evaluated yet: `python -m training.demo_family evaluate --model assets/demo/teacher`.")
    else:
        lines += [
            f"`studio/evaluator.py` (analytic: border colour, core-pixel colour, template IoU of the shape mask) on "
            f"images generated with {ev['train']['steps']} steps, guidance {ev['train']['guidance_scale']}, one seed "
            "per prompt:",
            "",
            "| prompts | n | background colour | shape colour | shape | all three |",
            "|---|---|---|---|---|---|",
        ]
        for name, label in (("train", "train-distribution combos"), ("heldout", "held-out combos (never seen)")):
            a = ev[name]["accuracy"]
            lines.append(f"| {label} | {ev[name]['n']} | {_pct(a['background'])} | {_pct(a['colour'])} | "
                         f"{_pct(a['shape'])} | {_pct(a['all'])} |")
        ch = ev["train"]["chance"]
        lines += [
            "",
            f"Chance levels: background {_pct(ch['background'])}, shape colour {_pct(ch['colour'])}, shape "
            f"{_pct(ch['shape'])}. The evaluator scores 100 % on ground-truth images (clean and blurred + noisy).",
            "",
            f"Latency, one 64 px image, {ev['train']['steps']} steps with CFG, {ev['threads']} CPU thread(s): "
            f"min {ev['latency']['min_s']:.2f} s, median {ev['latency']['median_s']:.2f} s of "
            f"{len(ev['latency']['runs'])} runs.",
        ]
    lines += ["", "Reproduce the numbers: `python -m training.demo_family evaluate --model assets/demo/teacher "
              "--n 200`.", ""]
    path = d / "README.md"
    path.write_text("\n".join(lines))
    return path


# CLI

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="demo family: train / evaluate the teacher")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teacher", help="train the teacher and save it")
    t.add_argument("--out", required=True)
    for flag, typ, name in (("--steps", int, "steps"), ("--vae-steps", int, "vae_steps"),
                            ("--batch-size", int, "batch_size"), ("--lr", float, "lr"),
                            ("--num-images", int, "num_images"), ("--seed", int, "seed")):
        t.add_argument(flag, type=typ, default=None, help=f"TeacherConfig.{name} (default: the preset's)")
    t.add_argument("--minutes", type=float, default=None, help="wall-clock cap for training")
    t.add_argument("--tiny", action="store_true", help="toy widths (tests, smoke runs)")
    t.add_argument("--checkpoint-every", type=int, default=0, help="save checkpoint-<step> folders (0 = never)")
    t.add_argument("--eval", type=int, default=0, help="evaluate on N train-distribution prompts after training")
    e = sub.add_parser("evaluate", help="score a saved teacher with studio.evaluator")
    e.add_argument("--model", required=True)
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance", type=float, default=5.0)
    e.add_argument("--grid", default=None, help="save a PNG grid of the generated images here")
    e.add_argument("--card-command", default=None,
                   help="training command for README.md (default: the one in training_config.json)")
    for q in (t, e):
        q.add_argument("--threads", type=int, default=2, help="torch CPU threads (results depend on it)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.cmd == "teacher":
        fields = {k: getattr(a, k) for k in ("steps", "vae_steps", "batch_size", "lr", "num_images", "seed")
                  if getattr(a, k) is not None}
        cfg = TeacherConfig.tiny(**fields) if a.tiny else TeacherConfig(**fields)
        res = train_teacher(cfg, a.out, minutes=a.minutes, checkpoint_every=a.checkpoint_every)
        print(json.dumps({"seconds": res.seconds, "steps_done": res.steps_done}))
        if a.eval:
            report, _ = evaluate_teacher(a.out, a.eval, guidance_scale=cfg.guidance_scale,
                                         steps=cfg.num_inference_steps)
            print(json.dumps(report, indent=2))
        write_model_card(a.out)
    else:
        report, images = evaluate_teacher(a.model, a.n, steps=a.steps, guidance_scale=a.guidance)
        if a.grid:
            save_grid(images, a.grid)
        if Path(a.model, "training_config.json").is_file():
            write_model_card(a.model, a.card_command)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
