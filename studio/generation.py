"""Text-to-image and image-to-image with any loaded SDXL-family pipeline, plus timing and memory stats.

    result = generate(pipe, GenerateRequest(prompt="a red circle on a blue background", seed=1), model_name="demo")
    result.images[0].save("out.png"); print(result.stats.latency_s, result.seed)

Progress goes to ``on_step(step, total, info)`` (``info`` holds the model name, the timestep and the scheduler object
running the loop); ``should_stop()`` is polled after every step and interrupts the diffusers loop
(``pipe._interrupt``), after which :class:`GenerationCancelled` is raised.

Memory: the VAE decodes one image at a time for batches and in tiles above ``TILE_ABOVE_PIXELS`` (or when asked to,
after an out-of-memory); a call can stream components to the GPU one at a time (``offload_device``, low-VRAM mode).

Speed options (request fields, applied to the shared modules for this call only, see ``studio.speed``): ``attention``,
``channels_last``, ``fuse_qkv``, ``vae_decode``, the tiny preview VAE (``vae="taesdxl"``) and feature reuse across
steps (``feature_reuse`` = the interval, ``feature_reuse_branch``; ``studio.reuse``). ``torch.compile`` is a mode of
the model cache (``ModelCache.set_compile``). None is on by default: each costs speed or image fidelity somewhere
(``python -m studio bench options`` measures both).
"""
from __future__ import annotations

import hashlib
import inspect
import re
import json
import secrets
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from studio.fewstep import condition_adapter
from studio.hosting import CapError, Caps
from studio.lora import LoraRef, lora_file, loras_applied
from studio.memory import PeakMemory, module_bytes
from studio.names import safe_name
from studio.pngmeta import format_parameters, save_png
from studio.registry import VAES
from studio.reuse import FeatureReuse, check_reuse
from studio.schedulers import SCHEDULERS, make_scheduler
from studio.speed import ATTENTION, VAE_DECODE, check_choice, check_flag, options_applied

MIN_SIZE, MAX_SIZE = 32, 2048
MAX_STEPS, MAX_BATCH, MAX_PROMPT_CHARS = 150, 8, 2000
MAX_SEED = 2**32 - 1
MAX_INIT_PIXELS = 8192 * 8192  # an init image's pixels, whatever the caller's cap (checked before decoding)
MAX_CONDITION_PIXELS = MAX_SIZE * MAX_SIZE  # a condition image is never larger than the largest output
VERSION = "sdxl-studio 0.1"
TILE_ABOVE_PIXELS = 1536 * 1024  # decode in tiles above ~1.5 MP per image (SDXL's buckets are ~1 MP)

OnStep = Callable[[int, int, dict], None]
ShouldStop = Callable[[], bool]


class GenerationCancelled(RuntimeError):
    """Raised when ``should_stop()`` asked a generation to stop: which model, at which step of how many, and the
    images decoded from the latents where it stopped (partial: still noisy; empty when nothing was decoded)."""

    def __init__(self, message: str, *, model: str = "", step: int = 0, total: int = 0,
                 images: list[Image.Image] | None = None):
        super().__init__(message)
        self.model, self.step, self.total, self.images = model, step, total, list(images or [])


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
    # conditional models (``ModelSpec.conditional``, e.g. demo-sr): the image they start from (image data only, RGB,
    # at most MAX_CONDITION_PIXELS); text-to-image models beside them ignore it (``condition_request``)
    condition_image: Image.Image | None = field(default=None, compare=False, repr=False)
    vae: str = "default"  # "default" (the model's own), "fp16-fix" (SDXL's VAE that decodes in fp16), "taesdxl" (tiny)
    # speed options (studio.speed, studio.reuse); the defaults are the plain diffusers path
    attention: str = "sdpa"  # "sdpa" (PyTorch's fused attention) or "classic"
    channels_last: bool = False  # convolution weights in NHWC for this call
    fuse_qkv: bool = False  # one projection for Q, K, V (diffusers' fuse_qkv_projections); not with LoRAs
    vae_decode: str = "auto"  # "auto" (sliced for batches, tiled when large), "full", "sliced" or "tiled"
    feature_reuse: int = 1  # DeepCache-style: deep UNet features recomputed every N steps, reused between; 1 = off
    feature_reuse_branch: int = 0  # the skip branch recomputed on reused steps: 0 = shallowest (fastest)

    def __post_init__(self):
        if not isinstance(self.prompt, str) or len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt must be text of at most {MAX_PROMPT_CHARS} characters")
        if self.negative_prompt is None:  # "no negative prompt" (an API caller's null)
            object.__setattr__(self, "negative_prompt", "")
        if not isinstance(self.negative_prompt, str) or len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"negative_prompt must be text of at most {MAX_PROMPT_CHARS} characters; got "
                             f"{type(self.negative_prompt).__name__}")
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
        if self.vae not in VAES:
            raise ValueError(f"unknown vae {self.vae!r}; choose one of: {', '.join(VAES)}")
        check_choice("attention", self.attention, ATTENTION)
        check_flag("channels_last", self.channels_last)
        check_flag("fuse_qkv", self.fuse_qkv)
        check_choice("vae_decode", self.vae_decode, VAE_DECODE)
        check_reuse(self.feature_reuse, self.feature_reuse_branch)
        if self.condition_image is not None:
            image = self.condition_image
            if not isinstance(image, Image.Image):
                raise ValueError(f"condition_image must be image data (a PIL image), not {type(image).__name__}: "
                                 "file paths are not accepted")
            if image.width * image.height > MAX_CONDITION_PIXELS:
                raise ValueError(f"condition_image is {image.width}x{image.height}; at most {MAX_SIZE}x{MAX_SIZE} "
                                 f"({MAX_CONDITION_PIXELS:,} pixels): downscale it first")
            if image.mode != "RGB":
                object.__setattr__(self, "condition_image", image.convert("RGB"))

    def to_dict(self) -> dict:
        out = asdict(replace(self, init_image=None, condition_image=None))
        out.pop("init_image"), out.pop("condition_image")
        out["img2img"] = self.init_image is not None
        if self.condition_image is not None:
            out["condition"] = f"{self.condition_image.width}x{self.condition_image.height} image"
        return out


def card_request(spec, request: GenerateRequest) -> GenerateRequest:
    """``request`` as a few-step model (``spec.few_step``: an LCM, an LCM-LoRA) must run: its card's scheduler,
    steps and CFG; other models' requests are returned unchanged."""
    if not spec.few_step:
        return request
    return replace(request, scheduler=spec.scheduler, steps=spec.default_steps, guidance=spec.default_guidance)


def condition_request(spec, request: GenerateRequest) -> GenerateRequest:
    """``request`` for ``spec``: a conditional model gets its condition image as its card prepares it (fitted to the
    square output, box-downsampled to ``spec.condition_size`` at ``default_size``: demo-sr's 16x16 at 64x64); a
    text-to-image model drops it. A conditional model without one, or at a non-square size, is refused."""
    from studio.fewstep import low_res

    if not spec.conditional:
        return replace(request, condition_image=None) if request.condition_image is not None else request
    if request.condition_image is None:
        raise ValueError(f"{spec.name} is a conditional model: it makes its image from a condition image "
                         f"({spec.condition_size}x{spec.condition_size} low-resolution input, made "
                         f"{spec.default_size}x{spec.default_size}); give one (the Generate tab's 'Condition image', "
                         "the API's condition_image)")
    side = request.width or spec.default_size
    if (request.height or spec.default_size) != side:
        raise ValueError(f"{spec.name} is a conditional model trained on squares: width and height must be equal; "
                         f"got {request.width}x{request.height}")
    small = max(1, round(side * spec.condition_size / spec.default_size))
    return replace(request, condition_image=low_res(request.condition_image, side, small))


@dataclass
class GenerateStats:
    latency_s: float  # wall time of the whole call (text encoding, denoising, decoding)
    it_per_s: float  # denoising steps per second
    weights_mb: float  # weights resident for this model: its UNet, text encoders and VAE (shared ones included)
    peak_added_mb: float  # memory added during this call at its peak (activations, decode), beyond what was in use
    memory_kind: str  # "cuda peak" (allocator) or "process RSS" (CPU)
    unet_params: int
    device: str
    vae_tiled: bool = False  # decoded in tiles (large images, or after an out-of-memory)
    offloaded: bool = False  # low-VRAM mode: components streamed to the device one at a time
    warmup_s: float | None = None  # untimed first call after loading, when one was made (set by compare)
    retried: bool = False  # succeeded on the second try after an out-of-memory (set by compare)
    reused_steps: int = 0  # feature reuse: denoising steps that reused the deep UNet features


@dataclass
class GenerateResult:
    model: str
    images: list[Image.Image]
    seed: int  # seed of the first image
    request: GenerateRequest  # with the seed and size actually used
    stats: GenerateStats
    parameters: list[str]  # A1111 infotext of each image
    loras: list[LoraRef] = field(default_factory=list)
    error: str = ""  # set (and no images) when this model failed in a side-by-side run; the others still ran
    cancelled: bool = False  # stopped by the user: ``images`` are the partial ones (never saved), ``error`` says where

    @classmethod
    def failed(cls, model: str, request: GenerateRequest, error: str) -> "GenerateResult":
        return cls(model, [], request.seed, request, None, [], error=error)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write PNGs carrying their parameters; returns the paths. Names are ``<model>-<seed>-<settings>.png``
        (``settings``: 8 hex of a hash of everything else that shaped the image: prompt, steps, CFG, size, LoRAs,
        ...), with ``-2``, ``-3``... when that name is taken: a file is never overwritten."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (image, text) in enumerate(zip(self.images, self.parameters)):
            meta = {**self.request.to_dict(), "seed": self.seed + i, "model": self.model, "version": VERSION,
                    "loras": [{"name": r.name, "scale": r.scale} for r in self.loras]}
            stem = f"{safe_name(self.model) or 'model'}-{self.seed + i}-{settings_hash(meta)}"
            paths.append(save_png(image, _free_path(out_dir, stem), text, meta))
        return paths


def load_init_image(source, caps: Caps | None = None, *, what: str = "init image") -> Image.Image:
    """An init or condition image (``what`` in messages; a file path or a PIL image) as RGB, refused above ``caps.init_pixels`` (and `MAX_INIT_PIXELS`)
    *before* it is decoded: ``Image.open`` reads only the header, where a 140 KB PNG can declare 12000x12000."""
    limit = min(caps.init_pixels, MAX_INIT_PIXELS) if caps is not None else MAX_INIT_PIXELS
    too_big = f"is above this server's cap of {limit:,} (STUDIO_MAX_INIT_PIXELS); downscale it before uploading"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with a clear message
            image = source if isinstance(source, Image.Image) else Image.open(source)  # the header only
    except Image.DecompressionBombError as err:  # above Pillow's MAX_IMAGE_PIXELS x 2 (the app sets it to the cap)
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise CapError(f"{what} pixels {int(pixels.group(1)) if pixels else 0:,} {too_big}") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{what}: not a readable image ({type(err).__name__})") from None
    width, height = image.size
    if width * height > limit:
        raise CapError(f"{what} pixels ({width}x{height} =) {width * height:,} {too_big}")
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as err:  # truncated or corrupt data, found while decoding
        raise ValueError(f"{what}: the file is damaged ({type(err).__name__})") from None
def settings_hash(meta: dict) -> str:
    """8 hex of the settings of one image, seed and model left out (they are in the file name already)."""
    settings = {k: v for k, v in meta.items() if k not in ("seed", "model", "version")}
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _free_path(folder: Path, stem: str) -> Path:
    """``folder/stem.png``, or ``stem-2.png``, ``stem-3.png``... for the first name not taken (claimed atomically)."""
    for n in range(1, 10_000):
        path = folder / (f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
        try:
            path.open("xb").close()  # exclusive create: two runs can never pick the same name
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free file name for {stem} in {folder}")


def native_size(pipe: StableDiffusionXLPipeline) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def infotext(request: GenerateRequest, seed: int, model: str, lora_hashes: str = "") -> str:
    fields = {"Steps": request.steps, "Sampler": request.scheduler, "CFG scale": request.guidance, "Seed": seed,
              "Size": f"{request.width}x{request.height}", "Model": model,
              "Denoising strength": request.strength if request.init_image is not None else None,
              "Condition": (f"{request.condition_image.width}x{request.condition_image.height} image"
                            if request.condition_image is not None else None),
              "VAE": VAES[request.vae] and request.vae, "Lora hashes": lora_hashes,
              "Feature reuse": (f"{request.feature_reuse} (branch {request.feature_reuse_branch})"
                                if request.feature_reuse > 1 else None), "Version": VERSION}
    return format_parameters(request.prompt, request.negative_prompt, fields)


def _lora_hashes(loras: list[LoraRef], roots) -> str:
    """A1111's ``Lora hashes`` field: name: first 10 hex of the file's sha256."""
    parts = []
    for ref in loras:
        digest = hashlib.sha256(lora_file(ref, roots).read_bytes()).hexdigest()[:10]
        parts.append(f"{ref.name}: {digest}")
    return ", ".join(parts)


def generate(pipe: StableDiffusionXLPipeline, request: GenerateRequest, *, model_name: str = "model",
             loras: list[LoraRef] = (), roots: list[Path] | None = None, vae=None,
             offload_device: torch.device | None = None, tile_vae: bool = False,
             on_step: OnStep | None = None, should_stop: ShouldStop | None = None) -> GenerateResult:
    """Run one request on ``pipe`` (its weights are shared, never copied: img2img reuses the same modules).

    ``loras`` are applied with their scales for this call only; ``roots`` restricts LoRA paths to those folders
    (UI/API callers). ``vae`` replaces the model's VAE for this call (``request.vae`` names it). With
    ``offload_device`` the call moves one whole component at a time to that device (weights stay in CPU memory);
    ``tile_vae`` forces tiled decoding (the retry after an out-of-memory). The request's speed options are applied to
    the UNet and VAE for this call and undone afterwards.
    """
    # 1. resolve the random seed and the model's native size
    seed = secrets.randbelow(MAX_SEED + 1) if request.seed == -1 else request.seed
    size = native_size(pipe)
    request = replace(request, seed=seed, width=request.width or size, height=request.height or size)
    if request.width % pipe.vae_scale_factor or request.height % pipe.vae_scale_factor:
        raise ValueError(f"width and height must be multiples of {pipe.vae_scale_factor} for model {model_name}")
    if request.vae != "default" and vae is None:
        raise ValueError(f"request.vae={request.vae!r} needs the loaded VAE (ModelCache.vae) passed as vae=")
    if request.fuse_qkv and loras:
        raise ValueError("fuse_qkv cannot be combined with LoRAs: the fused projection would drop their Q/K/V "
                         "changes; turn one of them off")
    if request.feature_reuse > 1 and "_compiled_call_impl" in pipe.unet.__dict__:
        raise ValueError("feature_reuse cannot run on a UNet compiled whole (compile=full): every reused step would "
                         "be a recompiled variant of the whole graph (measured: minutes of compiling, no speed-up); "
                         "use compile=regional or off")
    reuse = (FeatureReuse(pipe.unet, request.feature_reuse, request.feature_reuse_branch)
             if request.feature_reuse > 1 else None)  # checks the branch against this UNet before anything runs
    conditional = condition_adapter(pipe) is not None  # a ControlNet or T2I-Adapter pipeline
    if conditional and request.condition_image is None:
        raise ValueError(f"{model_name} is a conditional model: it needs a condition image (condition_image)")
    if conditional and request.init_image is not None:
        raise ValueError(f"{model_name} is a conditional model: image-to-image (init_image) does not apply to it")
    # 2. a pipeline view with the requested scheduler (and VAE) over the same modules
    cls = StableDiffusionXLImg2ImgPipeline if request.init_image is not None else StableDiffusionXLPipeline
    cls = type(pipe) if conditional else cls
    components = {**pipe.components, "scheduler": make_scheduler(request.scheduler, pipe.scheduler.config)}
    if vae is not None:
        components["vae"] = vae
    view = cls(**components, force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
    view.set_progress_bar_config(disable=True)
    device = offload_device or pipe.unet.device
    generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(request.batch_size)]

    # 3. progress and cancel in the per-step callback
    done = [0]  # steps completed (reported in GenerationCancelled)

    def step_end(i, t) -> bool:
        """Count, report; True when the caller asks to stop."""
        done[0] = i + 1
        if reuse is not None:
            reuse.next_step()
        if on_step is not None:
            on_step(i + 1, _total_steps(view), {"model": model_name, "timestep": int(t), "scheduler": view.scheduler})
        return should_stop is not None and should_stop()

    def callback(p, i, t, kwargs):
        if step_end(i, t):
            p._interrupt = True
        return kwargs

    def legacy_callback(i, t, latents):  # no interrupt there: a stop ends the call at once, without partial images
        if step_end(i, t):
            raise GenerationCancelled(f"generation with {model_name} was cancelled at step {i + 1}/"
                                      f"{_total_steps(view)}", model=model_name, step=i + 1,
                                      total=_total_steps(view))

    kwargs = dict(prompt=request.prompt, negative_prompt=request.negative_prompt or None,
                  num_inference_steps=request.steps, guidance_scale=request.guidance,
                  num_images_per_prompt=request.batch_size, generator=generators,
                  width=request.width, height=request.height)
    # StableDiffusionXLAdapterPipeline (T2I-Adapters) only has the older per-step callback
    if "callback_on_step_end" in inspect.signature(view.__call__).parameters:
        kwargs["callback_on_step_end"] = callback
    else:
        kwargs.update(callback=legacy_callback, callback_steps=1)
    if request.init_image is not None:
        kwargs.pop("width"), kwargs.pop("height")
        kwargs.update(image=request.init_image.convert("RGB").resize((request.width, request.height)),
                      strength=request.strength)
    if conditional:
        kwargs["image"] = request.condition_image
    # 4. run and measure
    auto = request.vae_decode == "auto"
    tiled = tile_vae or request.vae_decode == "tiled" or (auto and request.width * request.height > TILE_ABOVE_PIXELS)
    sliced = request.vae_decode == "sliced" or (auto and request.batch_size > 1)
    weights = module_bytes(m for m in components.values() if isinstance(m, torch.nn.Module))
    speed = options_applied([view.unet, view.vae], attention=request.attention, channels_last=request.channels_last,
                            fuse_qkv=request.fuse_qkv)
    with _decode_mode(view.vae, tiled=tiled, sliced=sliced), _offloaded(view, offload_device), \
            loras_applied(pipe, list(loras), roots=roots), PeakMemory(device) as peak:
        start = time.perf_counter()  # applying and undoing the speed options is part of the call's cost
        with speed, reuse or nullcontext(), torch.inference_mode():
            images = view(**kwargs).images
        latency = time.perf_counter() - start
    # diffusers still decoded the latents where the loop stopped: the partial images
    if getattr(view, "interrupt", False):
        raise GenerationCancelled(f"generation with {model_name} was cancelled at step {done[0]}/"
                                  f"{_total_steps(view)}", model=model_name, step=done[0], total=_total_steps(view),
                                  images=images)
    steps_run = max(_total_steps(view), 1)
    stats = GenerateStats(latency_s=latency, it_per_s=steps_run / latency, weights_mb=weights / 2**20,
                          peak_added_mb=peak.added_bytes / 2**20, memory_kind=peak.kind,
                          unet_params=sum(p.numel() for p in pipe.unet.parameters()), device=str(device),
                          vae_tiled=tiled, offloaded=offload_device is not None,
                          reused_steps=reuse.reused_steps if reuse is not None else 0)
    hashes = _lora_hashes(list(loras), roots)
    texts = [infotext(request, seed + i, model_name, hashes) for i in range(len(images))]
    return GenerateResult(model_name, images, seed, request, stats, texts, list(loras))


def _total_steps(view) -> int:
    """Denoising steps of the call in progress (or just run): the pipeline's count, or its scheduler's timesteps."""
    total = getattr(view, "num_timesteps", None)
    return total if isinstance(total, int) else len(view.scheduler.timesteps)


@contextmanager
def _decode_mode(vae, *, tiled: bool, sliced: bool):
    """Tiled / sliced VAE decoding for this call only (the VAE module is shared by several pipelines)."""
    before = (getattr(vae, "use_tiling", False), getattr(vae, "use_slicing", False))
    vae.use_tiling, vae.use_slicing = tiled, sliced
    try:
        yield
    finally:
        vae.use_tiling, vae.use_slicing = before


@contextmanager
def _offloaded(view, device: torch.device | None):
    """diffusers' model CPU offload for this call: each component goes to ``device`` when it runs; afterwards the
    hooks are removed and every weight is back in CPU memory (the cache's low-VRAM home)."""
    if device is None:
        yield
        return
    view.enable_model_cpu_offload(device=device)
    try:
        yield
    finally:
        view.remove_all_hooks()
        for module in view.components.values():
            if isinstance(module, torch.nn.Module):
                module.to("cpu")
