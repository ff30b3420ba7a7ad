"""Load SDXL-family pipelines once, share identical components, and keep them in an LRU cache with a memory budget.

    cache = ModelCache()
    pipe = cache.get("demo-teacher")          # a StableDiffusionXLPipeline on the best device

Sharing: a model with a ``base`` (SSD-1B, Vega, exported students) gets only its UNet loaded; the pipeline is built
with ``from_pipe`` from the base's text encoders, tokenizers and VAE. Full pipelines from local folders share any
component whose files are byte-identical to one already loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors import safe_open

from studio.names import safe_name
from studio.paths import allow_pickle, resolve_inside
from studio.registry import ModelSpec, default_model, get_spec, list_models

SHARED_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
PIPELINE_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype

    @property
    def variant(self) -> str | None:
        return "fp16" if self.dtype == torch.float16 else None


def choose_runtime() -> Runtime:
    """CUDA with fp16 (bf16 with STUDIO_DTYPE=bf16) when a GPU is present, else CPU with fp32."""
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if os.environ.get("STUDIO_DTYPE") == "bf16" else torch.float16
        return Runtime(torch.device("cuda"), dtype)
    return Runtime(torch.device("cpu"), torch.float32)


def default_budget(runtime: Runtime) -> int:
    if "STUDIO_CACHE_GB" in os.environ:
        return int(float(os.environ["STUDIO_CACHE_GB"]) * 2**30)
    if runtime.device.type == "cuda":
        return int(torch.cuda.get_device_properties(0).total_memory * 0.85)
    return int(psutil.virtual_memory().total * 0.5)


def unet_param_count(unet: torch.nn.Module) -> int:
    return sum(p.numel() for p in unet.parameters())


def resolve_spec(name_or_path: str, *, roots: list[Path] | None = None) -> ModelSpec:
    """A registry name, or a local folder / .safetensors path (checked against ``roots`` when given)."""
    if not name_or_path or not str(name_or_path).strip():
        raise ModelLoadError("no model given; choose one of: " + ", ".join(s.name for s in list_models()))
    names = {s.name for s in list_models()}
    if name_or_path in names:
        return get_spec(name_or_path)
    looks_like_path = os.sep in name_or_path or name_or_path.endswith(".safetensors") or Path(name_or_path).exists()
    if not looks_like_path:
        get_spec(name_or_path)  # raises the "unknown model" error listing the known names
    path = resolve_inside(name_or_path, roots) if roots is not None else Path(name_or_path).expanduser().resolve()
    if not path.exists():
        raise ModelLoadError(f"model path {name_or_path!r} does not exist")
    full = path.is_dir() and (path / "model_index.json").exists()
    name = safe_name(path.stem) or "local"
    return ModelSpec(name=name, source=str(path), base=None if full else default_model())


def _fingerprint(folder: Path) -> str:
    """Content hash of a component folder (config + weights): equal hashes mean the same weights."""
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            digest.update(file.name.encode())
            with file.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _module_bytes(modules) -> int:
    seen, total = set(), 0
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def _explain(spec: ModelSpec, err: Exception) -> ModelLoadError:
    if spec.source_kind == "hub":
        return ModelLoadError(
            f"model {spec.name!r} ({spec.source}) is not available: it is not in the local Hugging Face cache and "
            f"the hub cannot be reached ({type(err).__name__}). Download it on a machine with internet "
            f"(`huggingface-cli download {spec.source}`), or point the studio at a local copy: "
            f"`python -m studio generate --model /path/to/diffusers-folder` or a single .safetensors file, "
            f"or put the folder under the models dir so it appears in the list.")
    return ModelLoadError(f"model {spec.name!r} could not be loaded from {spec.source}: {type(err).__name__}: {err}")


def read_safetensors_header(spec: ModelSpec, path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape from the file header, without reading weights; a clear error for a corrupt file."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as err:
        raise ModelLoadError(f"model {spec.name!r}: {path} is not a valid .safetensors file ({err})") from err


def check_unet_file(spec: ModelSpec, path: Path, unet_config: dict) -> None:
    """A diffusers-keyed UNet file must have exactly the keys and shapes of the base's UNet architecture."""
    found = read_safetensors_header(spec, path)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in UNet2DConditionModel.from_config(unet_config).state_dict().items()}
    if not set(found) & set(expected):
        return  # original (LDM) key names: diffusers converts them and reports its own errors
    wrong = sorted(k for k in expected if found.get(k) != expected[k]) + sorted(set(found) - set(expected))
    if wrong:
        raise ModelLoadError(
            f"model {spec.name!r}: the weights in {path} do not match the expected architecture (the UNet of "
            f"base {spec.base!r}): {len(wrong)} tensors missing, extra or of another shape, e.g. {wrong[:3]}")


class ModelCache:
    """Loaded pipelines by name, least-recently-used evicted first when their weights exceed ``budget_bytes``."""

    def __init__(self, budget_bytes: int | None = None, runtime: Runtime | None = None):
        self.runtime = runtime or choose_runtime()
        self.budget_bytes = budget_bytes if budget_bytes is not None else default_budget(self.runtime)
        self._pipes: OrderedDict[str, StableDiffusionXLPipeline] = OrderedDict()
        self._components: dict[str, object] = {}  # fingerprint -> loaded component
        self._lock = threading.RLock()

    # -- public -----------------------------------------------------------------------------------------------
    def get(self, name_or_spec: str | ModelSpec, *, roots: list[Path] | None = None) -> StableDiffusionXLPipeline:
        spec = name_or_spec if isinstance(name_or_spec, ModelSpec) else resolve_spec(name_or_spec, roots=roots)
        with self._lock:
            if spec.name in self._pipes:
                self._pipes.move_to_end(spec.name)
                return self._pipes[spec.name]
            try:
                pipe = self._load(spec)
            except ModelLoadError:
                raise
            except Exception as err:  # library errors become one clear message naming the model
                raise _explain(spec, err) from err
            self._pipes[spec.name] = pipe
            self._evict(keep=spec.name)
            return pipe

    def loaded(self) -> list[str]:
        return list(self._pipes)

    def memory_bytes(self) -> int:
        """Bytes of weights held, each shared component counted once."""
        return _module_bytes(m for p in self._pipes.values() for m in p.components.values()
                             if isinstance(m, torch.nn.Module))

    def clear(self) -> None:
        with self._lock:
            self._pipes.clear()
            self._components.clear()

    # -- loading ----------------------------------------------------------------------------------------------
    def _load(self, spec: ModelSpec) -> StableDiffusionXLPipeline:
        if spec.source_kind in ("folder", "file") and not Path(spec.source).exists():
            raise ModelLoadError(f"model {spec.name!r}: path {spec.source} does not exist")
        if spec.source.endswith((".ckpt", ".bin", ".pt")) and not allow_pickle():
            raise ModelLoadError(f"model {spec.name!r}: {spec.source} is a pickle checkpoint, which can run code; "
                                 "only .safetensors are loaded (a local user may opt in with STUDIO_ALLOW_PICKLE=1)")
        if spec.base:
            base = self.get(spec.base)
            unet = self._load_unet(spec, get_spec(spec.base) if spec.base in {s.name for s in list_models()} else None)
            return StableDiffusionXLPipeline.from_pipe(base, unet=unet, dtype=self.runtime.dtype)
        return self._load_pipeline(spec)

    def _common_kwargs(self, spec: ModelSpec) -> dict:
        kwargs = dict(dtype=self.runtime.dtype, use_safetensors=not allow_pickle())
        if spec.fp16_variant and self.runtime.variant:
            kwargs["variant"] = self.runtime.variant
        return kwargs

    def _load_unet(self, spec: ModelSpec, base: ModelSpec | None) -> UNet2DConditionModel:
        kwargs = self._common_kwargs(spec)
        source = Path(spec.source)
        if spec.source_kind == "file":
            if base is None:
                raise ModelLoadError(f"model {spec.name!r}: a single-file UNet needs a base model for its config")
            kwargs.pop("use_safetensors")
            kwargs.pop("variant", None)
            config = UNet2DConditionModel.load_config(base.source, subfolder="unet")
            check_unet_file(spec, source, config)
            unet = UNet2DConditionModel.from_single_file(str(source), config=base.source, subfolder="unet", **kwargs)
        elif spec.source_kind == "hub" or (source / "unet").is_dir():
            unet = UNet2DConditionModel.from_pretrained(spec.source, subfolder="unet", **kwargs)
        else:
            unet = UNet2DConditionModel.from_pretrained(spec.source, **kwargs)
        return unet.to(self.runtime.device)

    def _load_pipeline(self, spec: ModelSpec) -> StableDiffusionXLPipeline:
        kwargs = self._common_kwargs(spec)
        if spec.source_kind == "file":
            kwargs.pop("use_safetensors")
            pipe = StableDiffusionXLPipeline.from_single_file(spec.source, **kwargs)
            return pipe.to(self.runtime.device)
        shared, fingerprints = {}, {}
        if spec.source_kind == "folder":
            index = json.loads((Path(spec.source) / "model_index.json").read_text())
            if index.get("_class_name") not in PIPELINE_CLASSES:
                raise ModelLoadError(f"model {spec.name!r}: {spec.source} holds a {index.get('_class_name')}, "
                                     f"not an SDXL-family pipeline ({', '.join(PIPELINE_CLASSES)})")
            for comp in SHARED_COMPONENTS:
                folder = Path(spec.source) / comp
                if folder.is_dir():
                    fingerprints[comp] = f"{comp}:{_fingerprint(folder)}"
                    if fingerprints[comp] in self._components:
                        shared[comp] = self._components[fingerprints[comp]]
        else:
            fingerprints = {comp: f"{comp}:{spec.source}" for comp in SHARED_COMPONENTS}
            shared = {c: self._components[f] for c, f in fingerprints.items() if f in self._components}
        pipe = StableDiffusionXLPipeline.from_pretrained(spec.source, **shared, **kwargs).to(self.runtime.device)
        for comp, fp in fingerprints.items():
            self._components.setdefault(fp, getattr(pipe, comp))
        return pipe

    def _evict(self, keep: str) -> None:
        while self.memory_bytes() > self.budget_bytes and len(self._pipes) > 1:
            victim = next(name for name in self._pipes if name != keep)
            del self._pipes[victim]
        live = {id(m) for p in self._pipes.values() for m in p.components.values()}
        self._components = {fp: m for fp, m in self._components.items() if id(m) in live}
        if self.runtime.device.type == "cuda":
            torch.cuda.empty_cache()
