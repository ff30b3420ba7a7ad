"""The model catalogue: built-in SDXL-family models, the embedded demo family, and whatever users export.

    for spec in list_models(): print(spec.name, spec.source)
    spec = get_spec("ssd-1b")

A model's ``source`` is a hub id, a local diffusers folder or a single ``.safetensors`` file. When ``base`` names
another model, only the UNet comes from ``source`` and the text encoders, tokenizers, VAE and scheduler are the
base model's — loaded once and shared (SSD-1B and Vega ship SDXL's text encoders and VAE unchanged).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from studio.names import safe_name
from studio.paths import ASSETS_DIR, DEMO_DIR, models_dir

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SOURCE_KINDS = ("hub", "folder", "file")
SPEC_FILE = "studio_model.json"  # optional, inside an exported folder: {"base": ..., "description": ...}
CONFIGS_DIR = ASSETS_DIR / "configs"  # released configs laid out like the hub repos: configs/<model>/unet/config.json
# VAE choices for SDXL-class models: "default" is the model's own; fp16-fix is SDXL's VAE rescaled so that it decodes
# in fp16 without overflowing (its config says force_upcast: false, so the pipeline does not upcast to fp32); taesdxl
# is the tiny preview decoder for SDXL latents (AutoencoderTiny: 1.2 M decoder params instead of 49.5 M, loses detail).
VAES = {"default": None, "fp16-fix": "madebyollin/sdxl-vae-fp16-fix", "taesdxl": "madebyollin/taesdxl"}
TINY_VAES = ("taesdxl",)  # loaded as diffusers.AutoencoderTiny


@dataclass(frozen=True)
class ModelSpec:
    name: str  # registry key, lower-case, e.g. "ssd-1b"
    source: str  # hub id, local diffusers folder, or single .safetensors file
    base: str | None = None  # registry model supplying every component but the UNet
    description: str = ""
    fp16_variant: bool = False  # the hub repo publishes variant="fp16" weights
    unet_params: int | None = None  # published UNet size, listed without loading anything
    default_size: int | None = None  # native resolution in pixels
    default_steps: int = 25
    default_guidance: float = 5.0
    default_negative_prompt: str = ""  # the model card's recommended negative prompt
    scheduler: str = ""  # the card's sampler (few-step models: "LCM"); "" = the user's choice
    lora: bool = False  # ``source`` is a LoRA (an LCM-LoRA) fused into the ``base`` model's UNet
    # a conditional model (a T2I-Adapter or ControlNet + LoRA on ``base``, e.g. demo-sr's 4x super-resolution): the side of
    # the low-resolution condition image it reads at ``default_size``; 0 = text-to-image
    condition_size: int = 0

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise ValueError(f"ModelSpec.name {self.name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-'")
        if not self.source:
            raise ValueError(f"ModelSpec.source of {self.name!r} must be a hub id, a folder or a .safetensors file")
        if self.base == self.name:
            raise ValueError(f"ModelSpec.base of {self.name!r} cannot be the model itself")
        if self.lora and not self.base:
            raise ValueError(f"ModelSpec.base of {self.name!r}: a LoRA model needs the model it applies to")
        if self.condition_size and not (self.base and 0 < self.condition_size < (self.default_size or 0)):
            raise ValueError(f"ModelSpec.condition_size of {self.name!r}: a conditional model needs a base and a "
                             f"default_size above its condition size; got {self.condition_size}, {self.default_size}")

    @property
    def conditional(self) -> bool:
        """Makes its image from a condition image (``GenerateRequest.condition_image``) besides the prompt."""
        return self.condition_size > 0

    @property
    def few_step(self) -> bool:
        """Made for a few-step sampler (an LCM, an LCM-LoRA): runs with its card's scheduler, steps and CFG."""
        return bool(self.scheduler)

    @property
    def source_kind(self) -> str:
        if self.source.endswith((".safetensors", ".ckpt", ".bin", ".pt")):
            return "file"
        if Path(self.source).is_absolute() or self.source.startswith((".", "~")) or Path(self.source).exists():
            return "folder"
        return "hub"

    def to_dict(self) -> dict:
        return asdict(self)


# Defaults from the model cards: SDXL's card calls the pipeline with its defaults (CFG 5.0); SSD-1B's and Vega's ask for
# a negative prompt (the ones in their usage examples) and "a CFG around 9.0". No card gives a step count (their
# examples run the pipeline default, 50); 30 is the step count of diffusers' SDXL/SSD-1B speed benchmarks.
BUILTIN = [
    ModelSpec("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", fp16_variant=True, unet_params=2_567_463_684,
              default_size=1024, default_steps=30, default_guidance=5.0, description="SDXL base 1.0 (teacher)"),
    ModelSpec("ssd-1b", "segmind/SSD-1B", base="sdxl", fp16_variant=True, unet_params=1_331_334_404,
              default_size=1024, default_steps=30, default_guidance=9.0,
              default_negative_prompt="ugly, blurry, poor quality",
              description="Segmind SSD-1B: SDXL distilled, 50% smaller"),
    ModelSpec("vega", "segmind/Segmind-Vega", base="sdxl", fp16_variant=True, unet_params=745_225_604,
              default_size=1024, default_steps=30, default_guidance=9.0,
              default_negative_prompt="(worst quality, low quality, illustration, 3d, 2d, painting, cartoons, sketch)",
              description="Segmind Vega: SDXL distilled, 70% smaller"),
    # Few-step relatives (LCM, arXiv 2310.04378; LCM-LoRA, arXiv 2311.05556): LCMScheduler, 2-8 steps. The cards' usage
    # examples: lcm-ssd-1b 4 steps at guidance 8 (its UNet embeds the scale, one forward per step); the LCM-LoRAs 4
    # steps with guidance off (lcm-lora-sdxl's card: "disable guidance_scale or use values between 1.0 and 2.0";
    # VegaRT's example passes 0, which diffusers treats as 1: no CFG).
    ModelSpec("lcm-lora-sdxl", "latent-consistency/lcm-lora-sdxl", base="sdxl", lora=True, default_size=1024,
              default_steps=4, default_guidance=1.0, scheduler="LCM",
              description="LCM-LoRA for SDXL (197 M adapter params): 4 steps"),
    ModelSpec("lcm-ssd-1b", "latent-consistency/lcm-ssd-1b", base="sdxl", fp16_variant=True, default_size=1024,
              default_steps=4, default_guidance=8.0, scheduler="LCM",
              description="LCM distilled from SSD-1B: 2-8 steps"),
    ModelSpec("vega-rt", "segmind/Segmind-VegaRT", base="vega", lora=True, default_size=1024, default_steps=4,
              default_guidance=1.0, scheduler="LCM", description="Segmind VegaRT: LCM-LoRA for Vega, 4 steps"),
]
DEMO_NAMES = {"teacher": "demo-teacher", "ssd": "demo-ssd", "vega": "demo-vega", "lcm": "demo-lcm"}
DEMO_CONDITIONAL = {"sr": "demo-sr"}  # the demo family's conditional models (text-to-image benches leave them out)
# the demo family's LCM-LoRAs, listed as models: (name, file under assets/demo/loras, the model it applies to)
DEMO_LCM_LORAS = (("demo-lcm-lora", "demo-lcm-lora.safetensors", "demo-teacher"),
                  ("demo-ssd-lcm-lora", "demo-ssd-lcm-lora.safetensors", "demo-ssd"))


def _demo_specs() -> list[ModelSpec]:
    """The embedded demo family: tiny SDXL-layout teacher and the students distilled from it (when present)."""
    specs = []
    for folder, name in (DEMO_NAMES | DEMO_CONDITIONAL).items():
        path = DEMO_DIR / folder
        meta = _read_spec_file(path)
        if (path / "model_index.json").exists() or (path / "unet").exists() or condition_size(meta):
            base = None if (path / "model_index.json").exists() else DEMO_NAMES["teacher"]
            specs.append(ModelSpec(name, str(path), base=base, default_size=meta.get("default_size", 64),
                                   default_steps=meta.get("default_steps", 20),
                                   default_guidance=float(meta.get("default_guidance", 5.0)),
                                   default_negative_prompt=meta.get("default_negative_prompt", ""),
                                   scheduler=meta.get("scheduler", ""), condition_size=condition_size(meta),
                                   description=f"demo family: {folder}"))
    for name, file, base in DEMO_LCM_LORAS:
        path = DEMO_DIR / "loras" / file
        if path.exists() and any(s.name == base for s in specs):
            specs.append(ModelSpec(name, str(path), base=base, lora=True, default_size=64, default_steps=4,
                                   default_guidance=1.0, scheduler="LCM", description=f"demo family: LCM-LoRA on {base}"))
    return specs


def _read_spec_file(path: Path) -> dict:
    file = path / SPEC_FILE
    return json.loads(file.read_text()) if file.exists() else {}


def condition_size(meta: dict) -> int:
    """The condition-image side a ``studio_model.json`` declares (``{"condition": {"size": 16, ...}}``); 0 = none."""
    condition = meta.get("condition") or {}
    size = condition.get("size", 0) if isinstance(condition, dict) else 0
    return size if isinstance(size, int) and size > 0 else 0


def _exported_specs() -> list[ModelSpec]:
    """Folders under the models dir: full pipelines, or UNet-only students that name their base."""
    specs = []
    for path in sorted(p for p in models_dir().iterdir() if p.is_dir()):
        meta = _read_spec_file(path)
        full = (path / "model_index.json").exists()
        if not full and not meta.get("base"):
            continue
        name = safe_name(path.name)
        if not name:
            continue
        specs.append(ModelSpec(name, str(path), base=None if full else meta["base"],
                               description=meta.get("description", "exported"),
                               default_size=meta.get("default_size"),
                               default_steps=meta.get("default_steps", 25),
                               default_guidance=meta.get("default_guidance", 5.0),
                               default_negative_prompt=meta.get("default_negative_prompt", ""),
                               scheduler=meta.get("scheduler", ""), condition_size=condition_size(meta)))
    return specs


def list_models() -> list[ModelSpec]:
    """Demo family first (it always works offline), then the built-in hub models, then exported models."""
    seen, out = set(), []
    for spec in _demo_specs() + BUILTIN + _exported_specs():
        if spec.name not in seen:
            seen.add(spec.name)
            out.append(spec)
    return out


def default_model() -> str:
    """The demo teacher when it is present, else SDXL."""
    names = [s.name for s in list_models()]
    return DEMO_NAMES["teacher"] if DEMO_NAMES["teacher"] in names else "sdxl"


def get_spec(name: str) -> ModelSpec:
    for spec in list_models():
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in list_models())
    raise ValueError(f"unknown model {name!r}; known models: {known} (or pass a local folder / .safetensors path)")


def is_available_offline(spec: ModelSpec) -> bool:
    """True when the weights are on this machine (a local path, or the Hugging Face cache holds the repo)."""
    if spec.source_kind != "hub":
        return Path(spec.source).exists()
    from huggingface_hub import try_to_load_from_cache

    probe = "unet/config.json" if spec.base else "model_index.json"
    return isinstance(try_to_load_from_cache(spec.source, probe), str)


def unet_config(spec: ModelSpec) -> dict | None:
    """The model's UNet config without loading weights or downloading: from its folder, from the Hugging Face
    cache, or from the released configs committed under assets/configs/<name>/; None when none is at hand."""
    candidates = []
    if spec.source_kind == "folder":
        folder = Path(spec.source)
        candidates += [folder / "unet" / "config.json", folder / "config.json"]
    elif spec.source_kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.source, "unet/config.json")
        if isinstance(cached, str):
            candidates.append(Path(cached))
    if spec.name in {s.name for s in BUILTIN}:
        candidates.append(CONFIGS_DIR / spec.name / "unet" / "config.json")
    for file in candidates:
        if file.is_file():
            return json.loads(file.read_text())
    return None


def count_unet_params(spec: ModelSpec) -> int | None:
    """Published size, or counted from the UNet config on the meta device (no weights read)."""
    if spec.unet_params:
        return spec.unet_params
    config = unet_config(spec)
    if config is None:
        return None
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return sum(p.numel() for p in unet.parameters())


def model_rows() -> list[dict]:
    return [{"name": s.name, "source": s.source, "base": s.base, "unet_params": count_unet_params(s),
             "offline": is_available_offline(s), "description": s.description} for s in list_models()]
