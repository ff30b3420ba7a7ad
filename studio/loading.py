"""Load SDXL-family pipelines once, share what they have in common, and keep them in an LRU cache that fits memory.

    cache = ModelCache()
    pipe = cache.get("vega")                 # Vega's UNet + SDXL's text encoders, tokenizers, VAE and scheduler
    pipe = cache.get(resolve_spec("/data/my-unet", base="sdxl"))   # names and paths: studio.resolve

Components: a model with a ``base`` (SSD-1B, Vega, exported students) loads only its own UNet; the text encoders,
tokenizers, VAE and scheduler come from the base's repo or folder and are loaded once and shared by every model that
uses them. The base's UNet is loaded only when the base itself is chosen. Two folders whose component files are the
same (same config, same file sizes, same safetensors headers and sampled bytes) also share the loaded component.

Memory: before loading, the bytes a model would add are read from its safetensors headers; least recently used
models are evicted until the weights plus the working memory of the request fit the budget. ``memory_bytes()`` is
what is resident, each shared tensor counted once. Low-VRAM mode keeps weights in CPU memory and moves one whole
component at a time to the GPU during a call (diffusers' model CPU offload).

Compile mode (``set_compile``: "off", "regional", "full"; ``studio.speed.compile_unet``): the UNets of the cached
pipelines are compiled with ``torch.compile`` lazily, on their first call in that mode (the untimed warm-up), and the
compiled code is kept per model, so switching modes back and forth recompiles nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionXLPipeline, UNet2DConditionModel

from studio.fewstep import ADAPTER_FOLDERS, adapter_kind, condition_adapter
from studio.memory import free_memory, module_bytes, safetensors_bytes
from studio.paths import allow_pickle
from studio.registry import CONFIGS_DIR, TINY_VAES, VAES, ModelSpec, get_spec
from studio.resolve import ModelLoadError, read_safetensors_header, resolve_spec
from studio.runtime import Runtime, choose_runtime, default_budget
from studio.speed import COMPILE, check_choice, compile_unet

SHARED_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler")
WEIGHT_COMPONENTS = ("text_encoder", "text_encoder_2", "vae")
PIPELINE_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


def check_unet_file(spec: ModelSpec, path: Path, config: dict) -> None:
    """A diffusers-keyed UNet file must have exactly the keys and shapes of the base's UNet architecture."""
    found = read_safetensors_header(spec.name, path)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in UNet2DConditionModel.from_config(config).state_dict().items()}
    if not set(found) & set(expected):
        return  # original (LDM) key names: diffusers converts them and reports its own errors
    wrong = sorted(k for k in expected if found.get(k) != expected[k]) + sorted(set(found) - set(expected))
    if wrong:
        raise ModelLoadError(
            f"model {spec.name!r}: the weights in {path} do not match the expected architecture (the UNet of "
            f"base {spec.base!r}): {len(wrong)} tensors missing, extra or of another shape, e.g. {wrong[:3]}")


def vae_status(choice: str) -> str:
    """Where a VAE choice would come from, for the UI: the model's own, the local cache, or the hub."""
    repo = VAES[choice]
    if repo is None:
        return "the model's own"
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return f"{repo}, in the local cache"
    return f"{repo}, not cached (offline)" if constants.HF_HUB_OFFLINE else f"{repo}, downloads on first use"


# ---------------------------------------------------------------------------------------------- files on disk

def local_folder(spec: ModelSpec) -> Path | None:
    """The folder holding ``spec``'s components on this machine: its own folder, or its Hugging Face cache snapshot
    (never downloads); None for a single file or a hub repo that is not cached."""
    if spec.source_kind == "folder":
        return Path(spec.source)
    if spec.source_kind == "hub":
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec.source, local_files_only=True))
        except Exception:  # not cached
            return None
    return None


def weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The .safetensors files diffusers/transformers read from a component folder for ``variant``."""
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if ".fp16." not in f.name and ".fp16-" not in f.name]
    tagged = [f for f in files if f".{variant}." in f.name or f".{variant}-" in f.name] if variant else []
    return tagged or plain


def component_fingerprint(folder: Path) -> str:
    """Identity of a component folder without hashing its weights: every small file's bytes, and for each weight
    file its size, its safetensors header and four 64 KiB samples spread over the data."""
    stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.rglob("*")) if f.is_file())
    return _fingerprint(stats)


@lru_cache(maxsize=256)
def _fingerprint(stats: tuple) -> str:
    digest = hashlib.sha256()
    for name, size, _ in stats:
        digest.update(f"{Path(name).name}:{size}".encode())
        with open(name, "rb") as fh:
            if size <= 1 << 20:
                digest.update(fh.read())
                continue
            head = fh.read(8)
            digest.update(head + fh.read(min(int.from_bytes(head, "little"), 1 << 24)))
            for k in range(1, 5):
                fh.seek(size * k // 5)
                digest.update(fh.read(1 << 16))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- the cache

@dataclass
class _Loaded:
    spec: ModelSpec
    pipe: StableDiffusionXLPipeline
    warm: bool = False  # a call has run since loading (first-call costs paid)
    compiled: str = "off"  # the UNet's compile mode
    compile_memo: dict = field(default_factory=dict)  # compile mode -> compiled callables (studio.speed)


class ModelCache:
    """Loaded pipelines by name; least recently used evicted first so that weights plus a request's working memory
    stay within ``budget_bytes``. One instance per app; safe to share between threads (loads are serialised)."""

    def __init__(self, budget_bytes: int | None = None, runtime: Runtime | None = None, *, offload: bool = False,
                 compile: str = "off"):
        self.runtime = runtime or choose_runtime()
        self.budget_bytes = budget_bytes if budget_bytes is not None else default_budget(self.runtime)
        self.offload = offload or os.environ.get("STUDIO_LOW_VRAM") == "1"
        check_choice("compile", compile, COMPILE)
        self.compile = compile
        self._models: OrderedDict[str, _Loaded] = OrderedDict()
        self._parts: dict[str, object] = {}  # component key -> loaded text encoder / tokenizer / VAE / scheduler
        self._vaes: dict[str, AutoencoderKL] = {}  # VAE choice -> loaded replacement VAE
        self._lock = threading.RLock()

    # -- public -----------------------------------------------------------------------------------------------
    def get(self, name_or_spec: str | ModelSpec, *, roots: list[Path] | None = None,
            workspace_bytes: int = 0) -> StableDiffusionXLPipeline:
        """The pipeline of a model, loading it if needed after evicting what must go for it and ``workspace_bytes``
        (the working memory of the coming call) to fit."""
        spec = name_or_spec if isinstance(name_or_spec, ModelSpec) else resolve_spec(name_or_spec, roots=roots)
        with self._lock:
            if spec.name in self._models:
                self._models.move_to_end(spec.name)
                self._make_room(0, workspace_bytes, keep=spec.name)
                return self._compiled(self._models[spec.name])
            self._check_source(spec)
            self._make_room(lambda: self.estimate_bytes(spec), workspace_bytes, keep=None)
            try:
                self._models[spec.name] = _Loaded(spec, self._load(spec))
            except ModelLoadError:
                raise
            except Exception as err:  # library errors become one clear message naming the model
                raise _explain(spec, err) from err
            finally:
                self._prune_parts()  # parts loaded for a model that failed are not kept
            self._make_room(0, 0, keep=spec.name)  # estimates can miss (a download): enforce after loading too
            return self._compiled(self._models[spec.name])

    def loaded(self) -> list[str]:
        return list(self._models)

    def spec(self, name: str) -> ModelSpec:
        return self._models[name].spec

    def memory_bytes(self) -> int:
        """Bytes of weights resident, each shared tensor counted once."""
        return module_bytes(self._resident_modules())

    def model_bytes(self, name: str) -> int:
        """Bytes of the weights a loaded model uses (its UNet, and the text encoders and VAE it shares)."""
        pipe = self._models[name].pipe
        return module_bytes(m for m in pipe.components.values() if isinstance(m, torch.nn.Module))

    def estimate_bytes(self, spec: ModelSpec) -> int:
        """Bytes loading ``spec`` would add now, from safetensors headers (components already resident cost 0; small
        non-persistent buffers such as position ids are not in the files); a UNet not on this machine is counted
        from its published size, other parts not on this machine as 0."""
        dtype = self.runtime.dtype
        total = self._unet_bytes(spec)
        parts = self._parts_spec(spec)
        folder = local_folder(parts)
        for comp in WEIGHT_COMPONENTS:
            if self._part_key(parts, comp) in self._parts or folder is None or not (folder / comp).is_dir():
                continue
            total += sum(safetensors_bytes(f, dtype) for f in weight_files(folder / comp, self._variant(parts)))
        return total

    def is_warm(self, name: str) -> bool:
        return name in self._models and self._models[name].warm

    def mark_warm(self, name: str) -> None:
        if name in self._models:
            self._models[name].warm = True

    def vae(self, choice: str, pipe: StableDiffusionXLPipeline) -> AutoencoderKL | None:
        """The replacement VAE for ``choice`` (None for "default"), loaded once; it must fit ``pipe``'s latents."""
        if choice not in VAES:
            raise ValueError(f"unknown VAE {choice!r}; choose one of: {', '.join(VAES)}")
        if VAES[choice] is None:
            return None
        with self._lock:
            if choice not in self._vaes:
                repo = VAES[choice]
                cls = AutoencoderTiny if choice in TINY_VAES else AutoencoderKL
                try:
                    vae = cls.from_pretrained(repo, dtype=self.runtime.dtype)
                except Exception as err:
                    raise ModelLoadError(
                        f"VAE {choice!r} ({repo}) is not available: it is not in the local Hugging Face cache and "
                        f"the hub cannot be reached ({type(err).__name__}); `huggingface-cli download {repo}` on a "
                        f"machine with internet, or choose the default VAE") from err
                self._vaes[choice] = vae.to(self._home)
            vae = self._vaes[choice]
        own = pipe.vae.config
        if (vae.config.latent_channels, len(vae.config.block_out_channels)) != (
                own.latent_channels, len(own.block_out_channels)):
            raise ValueError(f"VAE {choice!r} is for SDXL-class models ({vae.config.latent_channels} latent "
                             f"channels, scale factor {2 ** (len(vae.config.block_out_channels) - 1)}); this model "
                             "has its own VAE of another shape: choose the default VAE")
        return vae

    def set_offload(self, offload: bool) -> None:
        """Low-VRAM mode on or off: weights move to CPU memory (on) or back to the device (off)."""
        with self._lock:
            if offload == self.offload:
                return
            self.offload = offload
            for module in self._resident_modules():
                module.to(self._home)
            free_memory(self.runtime.device)

    def set_compile(self, mode: str) -> None:
        """Compile mode for every cached UNet: "off", "regional" (the transformer layers) or "full". A model's next
        call after a change is treated as its first (untimed warm-up, which pays the compile)."""
        check_choice("compile", mode, COMPILE)
        with self._lock:
            if mode == self.compile:
                return
            self.compile = mode
            for entry in self._models.values():
                entry.warm = False

    def _compiled(self, entry: _Loaded) -> StableDiffusionXLPipeline:
        """The entry's pipeline with its UNet in the cache's compile mode."""
        if entry.compiled != self.compile:
            compile_unet(entry.pipe.unet, self.compile, entry.compile_memo)
            entry.compiled = self.compile
        return entry.pipe

    @property
    def offload_device(self) -> torch.device | None:
        """The accelerator a call should stream components to (low-VRAM mode), else None."""
        return self.runtime.device if self.offload else None

    def free(self, keep: str | None = None) -> None:
        """Evict every model but ``keep`` and the replacement VAEs, and return the memory (after an out-of-memory)."""
        with self._lock:
            for name in [n for n in self._models if n != keep]:
                del self._models[name]
            self._vaes.clear()
            self._prune_parts()
            free_memory(self.runtime.device)

    def clear(self) -> None:
        self.free(keep=None)

    # -- memory -------------------------------------------------------------------------------------------------
    @property
    def _home(self) -> torch.device:
        return torch.device("cpu") if self.offload else self.runtime.device

    def _resident_modules(self) -> list[torch.nn.Module]:
        modules = [m for e in self._models.values() for m in e.pipe.components.values()
                   if isinstance(m, torch.nn.Module)]
        return modules + list(self._vaes.values())

    def _make_room(self, need, workspace_bytes: int, keep: str | None) -> None:
        """Evict least recently used models (never ``keep``) until resident + ``need`` + workspace fits the budget.
        ``need`` may be a callable: what a load adds depends on which shared parts are still resident."""
        while True:
            needed = need() if callable(need) else need
            if self.memory_bytes() + needed + workspace_bytes <= self.budget_bytes:
                return
            victims = [n for n in self._models if n != keep]
            if not victims:
                return
            del self._models[victims[0]]
            self._prune_parts()
            free_memory(self.runtime.device)

    def _prune_parts(self) -> None:
        live = {id(m) for e in self._models.values() for m in e.pipe.components.values()}
        self._parts = {key: m for key, m in self._parts.items() if id(m) in live}

    # -- loading ------------------------------------------------------------------------------------------------
    def _check_source(self, spec: ModelSpec) -> None:
        if spec.source_kind in ("folder", "file") and not Path(spec.source).exists():
            raise ModelLoadError(f"model {spec.name!r}: path {spec.source} does not exist")
        if spec.source.endswith((".ckpt", ".bin", ".pt")) and not allow_pickle():
            raise ModelLoadError(f"model {spec.name!r}: {spec.source} is a pickle checkpoint, which can run code; "
                                 "only .safetensors are loaded (a local user may opt in with STUDIO_ALLOW_PICKLE=1)")
        if spec.conditional and adapter_kind(spec.source) is None:
            raise ModelLoadError(f"model {spec.name!r}: a conditional model's folder must hold its adapter "
                                 f"({' or '.join(f'{d}/' for d in ADAPTER_FOLDERS.values())}); {spec.source} has none")
        if spec.lora and spec.source_kind != "hub" and not spec.source.endswith(".safetensors"):
            raise ModelLoadError(f"model {spec.name!r}: a LoRA model's source must be a .safetensors file")
        if spec.source_kind == "file" and not spec.base:
            raise ModelLoadError(f"model {spec.name!r}: a single .safetensors file holds a UNet; name the model "
                                 "that supplies its text encoders and VAE (base)")
        if spec.source_kind == "folder" and not spec.base:
            index = Path(spec.source) / "model_index.json"
            if not index.exists():
                raise ModelLoadError(f"model {spec.name!r}: {spec.source} has no model_index.json (a UNet-only "
                                     "folder needs a base)")
            kind = json.loads(index.read_text()).get("_class_name")
            if kind not in PIPELINE_CLASSES:
                raise ModelLoadError(f"model {spec.name!r}: {spec.source} holds a {kind}, not an SDXL-family "
                                     f"pipeline ({', '.join(PIPELINE_CLASSES)})")

    def _parts_spec(self, spec: ModelSpec) -> ModelSpec:
        """Where a model's text encoders, tokenizers, VAE and scheduler come from: its base, or itself."""
        if spec.lora:
            return self._parts_spec(get_spec(spec.base))
        return get_spec(spec.base) if spec.base else spec

    def _variant(self, spec: ModelSpec) -> str | None:
        return self.runtime.variant if spec.fp16_variant else None

    def _part_key(self, spec: ModelSpec, comp: str) -> str:
        folder = local_folder(spec)
        if folder is not None and (folder / comp).is_dir():
            return f"{comp}:{component_fingerprint(folder / comp)}"
        return f"{comp}:{spec.source}"

    def _unet_bytes(self, spec: ModelSpec) -> int:
        if spec.lora:  # fused into a copy of the base's UNet
            return self._unet_bytes(get_spec(spec.base))
        if spec.conditional:  # the base's UNet (its LoRA fused in) and the condition adapter
            adapter = weight_files(Path(spec.source) / ADAPTER_FOLDERS[adapter_kind(spec.source)], None)
            return self._unet_bytes(get_spec(spec.base)) + sum(safetensors_bytes(f, self.runtime.dtype)
                                                               for f in adapter)
        folder = local_folder(spec)
        element = torch.tensor([], dtype=self.runtime.dtype).element_size()
        if spec.source_kind == "file":
            try:
                return safetensors_bytes(spec.source, self.runtime.dtype)
            except Exception as err:
                raise ModelLoadError(f"model {spec.name!r}: {spec.source} is not a valid .safetensors file "
                                     f"({err})") from err
        if folder is not None:
            unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
            files = weight_files(unet_dir, self._variant(spec))
            if files:
                return sum(safetensors_bytes(f, self.runtime.dtype) for f in files)
        return (spec.unet_params or 0) * element

    def _kwargs(self, spec: ModelSpec) -> dict:
        kwargs = dict(dtype=self.runtime.dtype, use_safetensors=not allow_pickle())
        if self._variant(spec):
            kwargs["variant"] = self._variant(spec)
        return kwargs

    def _load(self, spec: ModelSpec) -> StableDiffusionXLPipeline:
        if spec.lora:  # an LCM-LoRA model: a fresh copy of its base's UNet with the LoRA fused in
            pipe = self._load(get_spec(spec.base))
            pipe.load_lora_weights(spec.source, adapter_name="model")
            pipe.fuse_lora(components=["unet"], adapter_names=["model"])
            pipe.unload_lora_weights()
            return pipe
        if spec.conditional:  # a ControlNet / T2I-Adapter pipeline: the adapter, its LoRA fused into a fresh base UNet
            from studio.fewstep import load_fewstep_pipeline

            pipe = load_fewstep_pipeline(spec.source, self._load(get_spec(spec.base)), copy_unet=False)
            condition_adapter(pipe).to(self._home, self.runtime.dtype)
            return pipe
        parts = self._parts_spec(spec)
        unet = self._load_unet(spec, parts) if spec.base else None
        shared = {}
        for comp in SHARED_COMPONENTS:
            key = self._part_key(parts, comp)
            if key in self._parts:
                shared[comp] = self._parts[key]
        if unet is not None:
            shared["unet"] = unet
        pipe = StableDiffusionXLPipeline.from_pretrained(parts.source, **shared, **self._kwargs(parts))
        pipe.to(self._home)
        for comp in SHARED_COMPONENTS:
            self._parts.setdefault(self._part_key(parts, comp), getattr(pipe, comp))
        return pipe

    def _load_unet(self, spec: ModelSpec, base: ModelSpec) -> UNet2DConditionModel:
        kwargs = self._kwargs(spec)
        source = Path(spec.source)
        if spec.source_kind == "file":
            released = CONFIGS_DIR / base.name
            config_source = local_folder(base) or (released if (released / "unet").is_dir() else base.source)
            config = UNet2DConditionModel.load_config(str(config_source), subfolder="unet")
            check_unet_file(spec, source, config)
            unet = UNet2DConditionModel.from_single_file(str(source), config=str(config_source), subfolder="unet",
                                                         dtype=self.runtime.dtype)
        elif spec.source_kind == "hub":  # a pipeline repo's unet/, or a UNet-only repo (latent-consistency/lcm-*)
            try:
                unet = UNet2DConditionModel.from_pretrained(spec.source, subfolder="unet", **kwargs)
            except EnvironmentError:
                unet = UNet2DConditionModel.from_pretrained(spec.source, **kwargs)
        elif (source / "unet").is_dir():
            unet = UNet2DConditionModel.from_pretrained(spec.source, subfolder="unet", **kwargs)
        else:
            unet = UNet2DConditionModel.from_pretrained(spec.source, **kwargs)
        return unet.to(self._home)


def _explain(spec: ModelSpec, err: Exception) -> ModelLoadError:
    repos = [s.source for s in ([spec] + ([get_spec(spec.base)] if spec.base else [])) if s.source_kind == "hub"]
    missing = [r for r in repos if local_folder(ModelSpec("probe", r)) is None] or repos
    if missing:
        return ModelLoadError(
            f"model {spec.name!r} ({spec.source}) is not available: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not in the local Hugging Face cache and the hub cannot be "
            f"reached ({type(err).__name__}). Download on a machine with internet "
            f"(`huggingface-cli download {missing[0]}`), or point the studio at a local copy: "
            f"`python -m studio generate --model /path/to/diffusers-folder` or a single .safetensors file, "
            f"or put the folder under the models dir so it appears in the list.")
    return ModelLoadError(f"model {spec.name!r} could not be loaded from {spec.source}: {type(err).__name__}: {err}")
