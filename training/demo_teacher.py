"""Train the demo family's teacher: a tiny SDXL-architecture pipeline on the synthetic shapes data, CPU only.

    python -m training.demo_family teacher --out assets/demo/teacher --steps 1800 --minutes 40
    result = train_teacher(TeacherConfig.tiny(), "outputs/tiny-teacher")      # the same, from Python

Stage 1 trains the AutoencoderKL briefly on the synthetic train split (64 px -> 16x16x4 latents) and sets its
``scaling_factor`` to 1 / std of the latents. Stage 2 caches the latents and trains the UNet together with both
CLIP text encoders on the epsilon-prediction loss (DDPM forward process of the pipeline's own noise schedule, as in
diffusers' ``train_text_to_image_sdxl.py``), with Min-SNR-gamma loss weighting (Hang et al. 2023, arXiv:2303.09556),
offset noise (so the sampler's start noise does not fix the background colour), an EMA of the weights and 10 %
caption dropout to the *zero* embedding, which is what ``StableDiffusionXLPipeline`` uses as the unconditional
input (``force_zeros_for_empty_prompt``). The result is saved with ``save_pretrained`` (safetensors) together with
``training_config.json`` and ``loss.csv``; ``python -m training.demo_family report`` scores it.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionXLPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

from studio.build import SDXLArch, build_sdxl_pipeline
from studio.demo import shapes
from studio.demo.tokenizer import build_tokenizer

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
    """The demo family's CLIP tokenizer: each word of ``shapes.DEMO_WORDS`` is one token."""
    return build_tokenizer(list(shapes.DEMO_WORDS))


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_images(cfg: TeacherConfig) -> tuple[torch.Tensor, list[str]]:
    """Train-split images as a float tensor (N, 3, H, W) in [-1, 1] plus their captions."""
    items = shapes.samples(shapes.SyntheticConfig(seed=cfg.seed, size=cfg.arch.image_size,
                                                        count=cfg.num_images, split="train"))
    pixels = torch.from_numpy(shapes.image_array(items)).permute(0, 3, 1, 2).float() / 127.5 - 1
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
