"""Which model a user means: a model argument resolved to a registry spec, and a UNet-only path paired with the model
that supplies its text encoders and VAE.

    resolve_spec("vega")                         # registry name
    resolve_spec("/data/my-unet", base="sdxl")   # local folder or .safetensors, base named explicitly
    resolve_spec("someone/sdxl-finetune", hub_ids=True)   # hub id (the command line)

A UNet tells which text encoders it needs by its conditioning widths (``config_signature``): the width of the text
features its cross-attention reads (SDXL: 768 + 1280 = 2048) and of its added embedding (pooled text + six size ids:
1280 + 6 × 256 = 2816). Nothing is loaded or downloaded to resolve a name.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from safetensors import safe_open

from studio.names import safe_name
from studio.paths import resolve_inside
from studio.registry import ModelSpec, _read_spec_file, condition_size, get_spec, list_models, unet_config

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says what was wrong and what to do."""


def resolve_spec(name_or_path: str, *, roots: list[Path] | None = None, base: str | None = None,
                 hub_ids: bool = False) -> ModelSpec:
    """A model argument, tried in this order: registry name, local path, hub id (``owner/name``).

    ``roots`` (UI/API callers) keeps paths inside those folders. Hub ids that are not in the registry are accepted
    only with ``hub_ids=True`` (the command line, a local user): from the app, a stranger could otherwise make the
    server download any repo. A UNet-only folder or file takes
    its base from ``base`` (the CLI's --base), else from its ``studio_model.json``, else from its config (the
    registry model whose text encoders and size embedding fit the UNet's cross-attention and addition-embedding
    widths), else a clear error. Path models are named ``<folder or file name>-<6 hex of the path>`` (unique),
    unless the path is a registry model's own source.
    """
    text = str(name_or_path or "").strip()
    registry = {s.name: s for s in list_models()}
    if not text:
        raise ModelLoadError("no model given; choose one of: " + ", ".join(registry))
    if text in registry:
        return registry[text]
    path = Path(text).expanduser()
    hub_like = HUB_ID.match(text) and not text.startswith((".", "/", "~"))
    if roots is not None:  # remote callers: decided without asking whether anything outside the roots exists
        inside = _inside(path, roots)
        if inside is not None and inside.exists():
            return _path_spec(inside, base, registry)
        if _path_like(text) and not hub_like:
            if inside is None:
                resolve_inside(path, roots)  # its "outside the allowed folders" error
            raise ModelLoadError(f"model path {text!r} does not exist")
    elif path.exists() or text.startswith(("/", ".", "~")) or text.endswith(WEIGHT_SUFFIXES):
        resolved = path.resolve()
        if not resolved.exists():
            raise ModelLoadError(f"model path {text!r} does not exist")
        return _path_spec(resolved, base, registry)
    if HUB_ID.match(text):
        if not hub_ids or roots is not None:
            raise ModelLoadError(f"model {text!r}: hub ids are loaded from the command line only (`python -m "
                                 f"studio generate --model {text}`); here choose a listed model")
        return ModelSpec(safe_name(text.replace("/", "-")) or "hub-model", text,
                         base=_checked_base(text, base, None) if base else None)
    return get_spec(text)  # raises "unknown model" listing the known names


def _path_like(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.endswith(WEIGHT_SUFFIXES) or "/" in text or "\\" in text


def _inside(path: Path, roots: list[Path]) -> Path | None:
    """``path`` resolved when it lies inside one of ``roots``, else None (nothing about its existence)."""
    try:
        return resolve_inside(path, roots)
    except ValueError:
        return None


def _path_spec(path: Path, base: str | None, registry: dict[str, ModelSpec]) -> ModelSpec:
    for spec in registry.values():
        if spec.source_kind != "hub" and Path(spec.source).resolve() == path:
            return spec
    label = safe_name(path.stem if path.is_file() else path.name)[:57] or "local"
    name = f"{label}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"
    if path.is_dir() and (path / "model_index.json").exists():
        return ModelSpec(name, str(path))  # a full pipeline: it has its own text encoders and VAE
    meta = _read_spec_file(path) if path.is_dir() else {}
    signature = None if condition_size(meta) else unet_signature(path, name)  # a conditional folder: no UNet
    chosen = base or meta.get("base") or infer_base(signature)
    if not chosen:
        cross, proj, _ = signature or (None, None, None)
        raise ModelLoadError(
            f"model {name!r} ({path}) is a UNet without text encoders or VAE, and nothing says which model supplies "
            f"them: no studio_model.json with a \"base\", and no known model has text features {cross} wide with "
            f"an added embedding of {proj}. Name the base: `--base sdxl` (CLI), or write {{\"base\": \"sdxl\"}} "
            f"to studio_model.json in the folder")
    return ModelSpec(name, str(path), base=_checked_base(name, chosen, signature),
                     description=meta.get("description", f"local UNet ({path})"),
                     default_size=meta.get("default_size"), default_steps=meta.get("default_steps", 25),
                     default_guidance=float(meta.get("default_guidance", 5.0)),
                     default_negative_prompt=meta.get("default_negative_prompt", ""),
                     scheduler=meta.get("scheduler", ""), condition_size=condition_size(meta))


def _checked_base(name: str, base: str, signature: tuple | None) -> str:
    """``base`` must be a registry model with its own components whose UNet takes the same conditioning."""
    try:
        spec = get_spec(base)
    except ValueError as err:
        raise ModelLoadError(f"model {name!r}: base {base!r} is not a registry model ({err})") from None
    if spec.base:
        raise ModelLoadError(f"model {name!r}: base {base!r} has no text encoders or VAE of its own "
                             f"(its base is {spec.base!r}); name that one instead")
    known = unet_config(spec)
    if signature is not None and known is not None and config_signature(known) != signature:
        cross, proj, _ = signature
        bcross, bproj, _ = config_signature(known)
        raise ModelLoadError(
            f"model {name!r}: its UNet takes text features {cross} wide and an added embedding of {proj}, but "
            f"base {base!r} gives {bcross} and {bproj}; choose a base whose text encoders fit (--base)")
    return base


def config_signature(config: dict) -> tuple:
    """What a UNet needs from the other components: text feature width (cross-attention), added embedding width
    (pooled text + size ids), latent channels."""
    return (config.get("cross_attention_dim"), config.get("projection_class_embeddings_input_dim"),
            config.get("in_channels", 4))


def unet_signature(path: Path, name: str) -> tuple:
    """config_signature of a UNet folder (its config.json) or a .safetensors file (shapes in its header; diffusers
    or original key names)."""
    if path.is_dir():
        for config in (path / "unet" / "config.json", path / "config.json"):
            if config.is_file():
                return config_signature(json.loads(config.read_text()))
        raise ModelLoadError(f"model {name!r}: {path} is neither a diffusers pipeline folder (model_index.json) "
                             "nor a UNet folder (config.json, or unet/config.json)")
    shapes = read_safetensors_header(name, path)

    def width(suffixes, dim=1):
        return next((s[dim] for k, s in shapes.items() if k.endswith(suffixes) and len(s) > dim), None)

    return (width("attn2.to_k.weight"), width(("add_embedding.linear_1.weight", "label_emb.0.0.weight")),
            width(("conv_in.weight", "input_blocks.0.0.weight")) or 4)


def infer_base(signature: tuple) -> str | None:
    """The first registry model with its own components whose UNet takes ``signature``'s conditioning."""
    for spec in list_models():
        if spec.base is None:
            config = unet_config(spec)
            if config is not None and config_signature(config) == signature:
                return spec.name
    return None


def read_safetensors_header(name: str, path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape from the file header, without reading weights; a clear error for a corrupt file."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as err:
        raise ModelLoadError(f"model {name!r}: {path} is not a valid .safetensors file ({err})") from err
