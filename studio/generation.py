"""Text-to-image and image-to-image with any loaded SDXL-family pipeline, plus timing and memory stats.

    result = generate(pipe, GenerateRequest(prompt="a red circle on a blue background", seed=1), model_name="demo")
    result.images[0].save("out.png"); print(result.stats.latency_s, result.seed)

Progress goes to ``on_step(step, total, info)``; ``should_stop()`` is polled after every step and interrupts the
diffusers loop (``pipe._interrupt``), after which :class:`GenerationCancelled` is raised.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import psutil
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from studio.names import safe_name
from studio.lora import LoraRef, lora_file, loras_applied
from studio.pngmeta import format_parameters, save_png
from studio.schedulers import SCHEDULERS, make_scheduler

MIN_SIZE, MAX_SIZE = 32, 2048
MAX_STEPS, MAX_BATCH, MAX_PROMPT_CHARS = 150, 8, 2000
MAX_SEED = 2**32 - 1
VERSION = "sdxl-studio 0.1"

OnStep = Callable[[int, int, dict], None]
ShouldStop = Callable[[], bool]


class GenerationCancelled(RuntimeError):
    """Raised when ``should_stop()`` asked a generation to stop."""


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str  # what to draw
    negative_prompt: str = ""  # what to avoid
    seed: int = -1  # -1 = random; the seed used is reported; image i of a batch uses seed + i
    steps: int = 20  # denoising steps, 1-150
    guidance: float = 5.0  # classifier-free guidance scale, 0-30 (<= 1 disables CFG)
    width: int | None = None  # pixels, multiple of 8, 32-2048; None = the model's native size
    height: int | None = None
    scheduler: str = "Euler"  # one of SCHEDULERS
    batch_size: int = 1  # images per model, 1-8
    init_image: Image.Image | None = field(default=None, compare=False, repr=False)  # set for image-to-image
    strength: float = 0.75  # image-to-image: how much of the init image is replaced, (0, 1]

    def __post_init__(self):
        if not isinstance(self.prompt, str) or len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt must be text of at most {MAX_PROMPT_CHARS} characters")
        if len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"negative_prompt must be at most {MAX_PROMPT_CHARS} characters")
        if not (self.seed == -1 or 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be -1 (random) or between 0 and {MAX_SEED}; got {self.seed}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}; got {self.steps}")
        if not 0 <= self.guidance <= 30:
            raise ValueError(f"guidance must be between 0 and 30; got {self.guidance}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value % 8 or not MIN_SIZE <= value <= MAX_SIZE):
                raise ValueError(f"{name} must be a multiple of 8 between {MIN_SIZE} and {MAX_SIZE}; got {value}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}; got {self.batch_size}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1]; got {self.strength}")

    def to_dict(self) -> dict:
        out = asdict(replace(self, init_image=None))
        out.pop("init_image")
        out["img2img"] = self.init_image is not None
        return out


@dataclass
class GenerateStats:
    latency_s: float  # wall time of the whole call (text encoding, denoising, decoding)
    it_per_s: float  # denoising steps per second
    peak_memory_mb: float  # CUDA peak allocated, or the process RSS sampled at every step on CPU
    memory_kind: str  # "cuda peak" or "process RSS"
    unet_params: int
    device: str


@dataclass
class GenerateResult:
    model: str
    images: list[Image.Image]
    seed: int  # seed of the first image
    request: GenerateRequest  # with the seed and size actually used
    stats: GenerateStats
    parameters: list[str]  # A1111 infotext of each image
    loras: list[LoraRef] = field(default_factory=list)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write PNGs carrying their parameters; returns the paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (image, text) in enumerate(zip(self.images, self.parameters)):
            meta = {**self.request.to_dict(), "seed": self.seed + i, "model": self.model, "version": VERSION,
                    "loras": [{"name": r.name, "scale": r.scale} for r in self.loras]}
            paths.append(save_png(image, out_dir / f"{safe_name(self.model) or 'model'}-{self.seed + i}.png", text, meta))
        return paths


def native_size(pipe: StableDiffusionXLPipeline) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def infotext(request: GenerateRequest, seed: int, model: str, lora_hashes: str = "") -> str:
    fields = {"Steps": request.steps, "Sampler": request.scheduler, "CFG scale": request.guidance, "Seed": seed,
              "Size": f"{request.width}x{request.height}", "Model": model,
              "Denoising strength": request.strength if request.init_image is not None else None,
              "Lora hashes": lora_hashes, "Version": VERSION}
    return format_parameters(request.prompt, request.negative_prompt, fields)


def _lora_hashes(loras: list[LoraRef], roots) -> str:
    """A1111's ``Lora hashes`` field: name: first 10 hex of the file's sha256."""
    parts = []
    for ref in loras:
        digest = hashlib.sha256(lora_file(ref, roots).read_bytes()).hexdigest()[:10]
        parts.append(f"{ref.name}: {digest}")
    return ", ".join(parts)


def generate(pipe: StableDiffusionXLPipeline, request: GenerateRequest, *, model_name: str = "model",
             loras: list[LoraRef] = (), fuse_loras: bool = False, roots: list[Path] | None = None,
             on_step: OnStep | None = None, should_stop: ShouldStop | None = None) -> GenerateResult:
    """Run one request on ``pipe`` (its weights are shared, never copied: img2img reuses the same modules).

    ``loras`` are activated with their scales for this call only (``fuse_loras`` merges them for speed);
    ``roots`` restricts LoRA paths to those folders (UI/API callers).
    """
    # 1. resolve the random seed and the model's native size
    seed = secrets.randbelow(MAX_SEED + 1) if request.seed == -1 else request.seed
    size = native_size(pipe)
    request = replace(request, seed=seed, width=request.width or size, height=request.height or size)
    if request.width % pipe.vae_scale_factor or request.height % pipe.vae_scale_factor:
        raise ValueError(f"width and height must be multiples of {pipe.vae_scale_factor} for model {model_name}")
    # 2. a pipeline view with the requested scheduler over the same modules
    cls = StableDiffusionXLImg2ImgPipeline if request.init_image is not None else StableDiffusionXLPipeline
    view = cls(**{**pipe.components, "scheduler": make_scheduler(request.scheduler, pipe.scheduler.config)},
               force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
    view.set_progress_bar_config(disable=True)
    device = pipe.unet.device
    generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(request.batch_size)]
    # 3. progress, cancel and memory sampling in the per-step callback
    process, rss = psutil.Process(), [psutil.Process().memory_info().rss]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def callback(p, i, t, kwargs):
        rss.append(process.memory_info().rss)
        if on_step is not None:
            on_step(i + 1, p.num_timesteps, {"model": model_name, "timestep": int(t)})
        if should_stop is not None and should_stop():
            p._interrupt = True
        return kwargs

    kwargs = dict(prompt=request.prompt, negative_prompt=request.negative_prompt or None,
                  num_inference_steps=request.steps, guidance_scale=request.guidance,
                  num_images_per_prompt=request.batch_size, generator=generators,
                  callback_on_step_end=callback, width=request.width, height=request.height)
    if request.init_image is not None:
        kwargs.pop("width"), kwargs.pop("height")
        kwargs.update(image=request.init_image.convert("RGB").resize((request.width, request.height)),
                      strength=request.strength)
    # 4. run and measure
    start = time.perf_counter()
    with loras_applied(pipe, list(loras), roots=roots, fuse=fuse_loras), torch.inference_mode():
        images = view(**kwargs).images
    latency = time.perf_counter() - start
    if view.interrupt:
        raise GenerationCancelled(f"generation with {model_name} was cancelled")
    rss.append(process.memory_info().rss)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda peak"
    else:
        peak, kind = max(rss), "process RSS"
    steps_run = max(view.num_timesteps, 1)
    stats = GenerateStats(latency_s=latency, it_per_s=steps_run / latency, peak_memory_mb=peak / 2**20,
                          memory_kind=kind, unet_params=sum(p.numel() for p in pipe.unet.parameters()),
                          device=str(device))
    hashes = _lora_hashes(list(loras), roots)
    texts = [infotext(request, seed + i, model_name, hashes) for i in range(len(images))]
    return GenerateResult(model_name, images, seed, request, stats, texts, list(loras))
