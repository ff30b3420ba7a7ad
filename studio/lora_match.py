"""Which models a LoRA fits, before anything is loaded: a side-by-side run applies a LoRA only where it fits.

    fit = lora_fit(LoraRef("assets/demo/loras/demo-teacher-orange.safetensors"), get_spec("demo-vega"))
    fit.fits, fit.reason, fit.port       # False, "made for demo-teacher: ...", "python -m training.lora demo port ..."
    loras, notes = plan_loras(specs, ref, targets=[])   # {model: [ref]} for the models it fits; a note per model

A LoRA fits a model when (1) every UNet layer it adapts exists in the model's UNet with the input width the adapter
expects, and (2) the model it was made for (``base_model`` of the studio's training config in the file header, or
the student it was ported to) has the same UNet architecture — same layer names and shapes — as the model. (2)
catches what (1) cannot: a student made by removing layers renumbers the ones it keeps (its transformer layer 1 is
the teacher's layer 3), so a teacher's LoRA finds layers of the right names and widths and draws garbage. Such a
LoRA is ported through the student's name map (``python -m training.lora demo port``). Nothing here loads weights:
headers and UNet configs only (the UNet is built on the meta device).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from safetensors import safe_open

from studio import hosting
from studio.lora import LoraRef, lora_file
from studio.paths import models_dir
from studio.registry import ModelSpec, list_models, unet_config

# diffusers (``lora.down``), peft (``lora_A``) and older diffusers text-encoder (``lora_linear_layer.down``) keys
_DOWN = re.compile(r"^unet\.(.+?)\.(?:lora\.down|lora_A|lora_linear_layer\.down)(?:\.default)?\.weight$")


@dataclass(frozen=True)
class LoraFit:
    model: str
    fits: bool
    reason: str = ""  # why it does not fit ('' when it does)
    port: str = ""  # the command that ports it to this model (a student with a name map), when one can


@dataclass(frozen=True)
class LoraNote:
    text: str  # what happened to the LoRA on one model, for its column
    warning: bool = False  # not applied, or applied although it does not fit


@dataclass(frozen=True)
class LoraHeader:
    made_for: str  # the registry model (or folder) it was trained for or ported to; '' when the file does not say
    adapters: dict  # UNet module -> input width its adapter expects (diffusers/peft keys; {} for other formats)


def read_lora_header(path: Path) -> LoraHeader:
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        adapters = {}
        for key in fh.keys():
            if m := _DOWN.match(key):
                adapters[m.group(1)] = fh.get_slice(key).get_shape()[1]
    made_for = ""
    try:
        if "studio_ported_from" in meta:
            made_for = json.loads(meta["studio_ported_from"]).get("student", "")
        elif "studio_lora_config" in meta:
            made_for = json.loads(meta["studio_lora_config"]).get("base_model", "")
    except (json.JSONDecodeError, AttributeError):
        made_for = ""
    return LoraHeader(str(made_for or ""), adapters)


@lru_cache(maxsize=16)
def _shapes_of_config(config_json: str) -> dict[str, tuple[int, ...]]:
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads(config_json))
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def unet_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]] | None:
    """Parameter name -> shape of ``spec``'s UNet from its config (None when no config is at hand)."""
    config = unet_config(spec)
    if config is None:
        return None
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return _shapes_of_config(json.dumps(config, sort_keys=True))


def _spec_named(name: str) -> ModelSpec | None:
    """The registry model a header names: by name, or by its folder."""
    for spec in list_models():
        if spec.name == name:
            return spec
        if spec.source_kind != "hub" and name and Path(name).exists() \
                and Path(spec.source).resolve() == Path(name).resolve():
            return spec
    return None


def lora_fit(ref: LoraRef, spec: ModelSpec, roots: list[Path] | None = None) -> LoraFit:
    """Whether ``ref`` fits ``spec`` (see the module docstring); ValueError for a missing or corrupt LoRA file."""
    path = lora_file(ref, roots)
    header = read_lora_header(path)
    shapes = unet_shapes(spec)
    if shapes is not None and header.adapters:
        wrong = [m for m, width in header.adapters.items()
                 if len(shapes.get(f"{m}.weight", ())) < 2 or shapes[f"{m}.weight"][1] != width]
        if wrong:
            return _mismatch(ref, spec, header, f"{len(wrong)} of the {len(header.adapters)} UNet layers it adapts "
                                                f"are not in {spec.name}'s UNet (e.g. {wrong[0]})")
    made_for = _spec_named(header.made_for) if header.made_for else None
    if made_for is not None and made_for.name != spec.name and shapes is not None:
        theirs = unet_shapes(made_for)
        if theirs is not None and theirs != shapes:
            return _mismatch(ref, spec, header, f"its UNet has another architecture than {made_for.name}'s "
                                                f"({_difference(theirs, shapes)})", made_for)
    return LoraFit(spec.name, True)


def _difference(theirs: dict, ours: dict) -> str:
    layers = lambda shapes: sum(k.endswith("attn2.to_k.weight") for k in shapes)  # noqa: E731 - one use
    if layers(theirs) != layers(ours):
        return f"{layers(ours)} transformer layers instead of {layers(theirs)}"
    return f"{len(ours)} weight tensors instead of {len(theirs)}, or other shapes"


def _mismatch(ref: LoraRef, spec: ModelSpec, header: LoraHeader, why: str,
              made_for: ModelSpec | None = None) -> LoraFit:
    made_for = made_for or (_spec_named(header.made_for) if header.made_for else None)
    intro = f"LoRA {ref.name} was made for {made_for.name}" if made_for else f"LoRA {ref.name} does not fit {spec.name}"
    port = ""
    folder = Path(spec.source) if spec.source_kind == "folder" else None
    if folder is not None and (folder / "name_map.json").is_file() and made_for is not None \
            and made_for.name == spec.base:
        out = _shown(models_dir() / "loras" / f"{ref.name}-{spec.name}")
        port = f"python -m training.lora demo port --lora {_shown(lora_file(ref))} --student {spec.name} --out {out}"
    return LoraFit(spec.name, False, f"{intro}: {why}", port)


def plan_loras(specs: list[ModelSpec], ref: LoraRef | None, targets: list[str] | None = (),
               roots: list[Path] | None = None) -> tuple[dict[str, list[LoraRef]], dict[str, LoraNote]]:
    """The ``loras`` argument of ``iter_side_by_side`` and one note per model that says what happened to the LoRA.

    ``targets`` empty: the LoRA goes on every selected model it fits, and each other model's note says why it was
    left out (and how to port it, for a student). Named ``targets`` get it even where it does not fit (the user
    asked; the note warns). ValueError for a target that is not selected, or a missing/corrupt LoRA file."""
    if ref is None:
        return {}, {}
    names = [s.name for s in specs]
    unknown = [m for m in targets or [] if m and m not in names]
    if unknown:
        raise ValueError(f"LoRA target model(s) {unknown} are not among the selected models {names}")
    chosen = [m for m in targets or [] if m]
    loras, notes = {}, {}
    for spec in specs:
        if chosen and spec.name not in chosen:
            continue
        fit = lora_fit(ref, spec, roots)
        label = f"LoRA {ref.name} ×{ref.scale:g}"
        if fit.fits:
            loras[spec.name], notes[spec.name] = [ref], LoraNote(label)
        elif chosen:
            loras[spec.name] = [ref]
            notes[spec.name] = LoraNote(f"{label}, applied as asked, although it does not fit: {fit.reason}", True)
        else:
            notes[spec.name] = LoraNote(f"LoRA not applied. {fit.reason}." + (f" Port it: `{fit.port}`" if fit.port
                                                                               else ""), True)
    return loras, notes


def _shown(path: Path) -> str:
    """A path in a message: relative to the working folder when inside it; in public mode never absolute."""
    if hosting.current().public:
        return hosting.display_path(path)
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
