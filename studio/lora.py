"""LoRA adapters in generation: diffusers-format or kohya-format SDXL LoRAs, per model, with scales.

    ref = LoraRef.parse("outputs/models/my-style.safetensors:0.8")
    with loras_applied(pipe, [ref]):
        images = pipe(prompt).images

Adapters are loaded for the call (diffusers ``load_lora_weights`` through peft), activated with their scales by
``set_adapters``, and unloaded when the ``with`` block ends: the cached pipeline — and the text encoders and VAE it
shares with other models — leaves the block exactly as it entered it, same modules and same weights, so the Layers
tab, exports and other models never see a LoRA (generations run one at a time).
"""
from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from studio.paths import resolve_inside

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
MAX_LORAS, MAX_SCALE = 4, 4.0


@dataclass(frozen=True)
class LoraRef:
    path: str  # a .safetensors LoRA file, or a folder holding pytorch_lora_weights.safetensors
    scale: float = 1.0  # strength, -4..4 (0 = no effect)

    def __post_init__(self):
        if not self.path:
            raise ValueError("LoRA path must not be empty")
        if not -MAX_SCALE <= self.scale <= MAX_SCALE:
            raise ValueError(f"LoRA scale must be between {-MAX_SCALE} and {MAX_SCALE}; got {self.scale}")

    @classmethod
    def parse(cls, text: str) -> "LoraRef":
        """``path`` or ``path:scale`` (the CLI's --lora syntax)."""
        path, sep, scale = text.rpartition(":")
        if sep and re.fullmatch(r"-?\d+(\.\d*)?", scale):
            return cls(path, float(scale))
        return cls(text)

    @property
    def name(self) -> str:
        return Path(self.path).stem if Path(self.path).suffix else Path(self.path).name



def lora_weight_file(path: str | Path) -> Path:
    """The LoRA file of ``path`` (a file, or a folder holding LORA_WEIGHT_NAME)."""
    path = Path(path)
    return path / LORA_WEIGHT_NAME if path.is_dir() else path


def lora_file(ref: LoraRef, roots: list[Path] | None = None) -> Path:
    """The weight file of ``ref`` (inside ``roots`` when given); only .safetensors, with a readable header."""
    path = resolve_inside(ref.path, roots) if roots is not None else Path(ref.path).expanduser().resolve()
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
    if not path.exists():
        raise ValueError(f"LoRA {ref.path!r} not found (a .safetensors file or a folder with {LORA_WEIGHT_NAME})")
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA {ref.path!r}: only .safetensors LoRA files are loaded")
    try:
        with safe_open(str(path), framework="pt") as fh:
            if not list(fh.keys()):
                raise ValueError("no tensors")
    except Exception as err:
        raise ValueError(f"LoRA {ref.path!r} is not a valid .safetensors file ({err})") from err
    return path


def _adapter_name(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)[:40]}_{digest}"


def _loaded_adapters(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def ensure_loaded(pipe, ref: LoraRef, roots: list[Path] | None = None) -> str:
    """Load ``ref`` into ``pipe`` once; returns its adapter name. Clear error for a LoRA of another model."""
    path = lora_file(ref, roots)
    name = _adapter_name(path)
    if name in _loaded_adapters(pipe):
        return name
    try:
        pipe.load_lora_weights(str(path), adapter_name=name)
    except Exception as err:
        pipe.unload_lora_weights()  # a half-injected LoRA must not stay behind
        raise ValueError(f"LoRA {ref.name!r} does not fit this model's architecture: {err}") from err
    if name not in _loaded_adapters(pipe):
        raise ValueError(f"LoRA {ref.name!r} does not fit this model's architecture: none of its layers matched")
    return name


@contextmanager
def loras_applied(pipe, loras: list[LoraRef], *, roots: list[Path] | None = None):
    """Apply ``loras`` with their scales inside the block; afterwards the pipeline holds no adapter at all."""
    if len(loras) > MAX_LORAS:
        raise ValueError(f"at most {MAX_LORAS} LoRAs per model; got {len(loras)}")
    if not loras:
        yield
        return
    try:
        names = [ensure_loaded(pipe, ref, roots) for ref in loras]
        pipe.set_adapters(names, adapter_weights=[ref.scale for ref in loras])
        yield
    finally:
        pipe.unload_lora_weights()
