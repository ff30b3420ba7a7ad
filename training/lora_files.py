"""LoRA files: save and load diffusers-format LoRA weights (UNet and both text encoders, through peft), port a
teacher's LoRA to a student made by the layer-removal engine, and a teacher UNet with a LoRA fused in.

    save_lora("out/", unet, text_encoders, config=cfg.to_dict(), dtype=torch.float16)
    load_lora_into("out/", unet, text_encoders)          # into the "default" peft adapters
    port_lora("teacher-lora.safetensors", "demo-ssd", "out/ported")
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from studio.train_config.lora import LORA_WEIGHT_NAME, lora_weight_file
from training.models import load_base

PREFIXES = ("unet", "text_encoder", "text_encoder_2")


def load_teacher(name_or_path: str, lora: str = ""):
    """The frozen UNet of ``name_or_path`` with ``lora`` fused into its weights (output-KD target of a LoRA run)."""
    pipe = load_base(name_or_path)
    if lora:
        pipe.load_lora_weights(str(lora_weight_file(lora)), adapter_name="teacher")
        pipe.fuse_lora(adapter_names=["teacher"], lora_scale=1.0)
        pipe.unload_lora_weights()
    return pipe.unet.requires_grad_(False).eval()


def save_lora(folder: str | Path, unet, text_encoders=(), *, config: dict | None = None,
              dtype: torch.dtype = torch.float32) -> Path:
    """Write the ``default`` adapters of ``unet`` (and text encoders) in diffusers format, as ``dtype``; returns
    the file. UNet keys stay in peft's ``lora_A`` / ``lora_B`` naming, which ``load_lora_weights`` reads for every
    layer type (converting only the attention ones to the older ``lora.down`` naming would make a mixed file whose
    attention adapters diffusers silently drops, e.g. an LCM-LoRA on convolutions and attention)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import save_file

    def layers(model):
        state = get_peft_model_state_dict(model, adapter_name="default")
        if model is not unet:
            state = convert_state_dict_to_diffusers(state)
        return {k: v.detach().to(dtype) for k, v in state.items()}

    def meta(model):
        return model.peft_config["default"].to_dict()

    kwargs = dict(unet_lora_layers=layers(unet), unet_lora_adapter_metadata=meta(unet))
    for name, te in zip(("text_encoder", "text_encoder_2"), text_encoders):
        kwargs |= {f"{name}_lora_layers": layers(te), f"{name}_lora_adapter_metadata": meta(te)}
    folder = Path(folder)
    StableDiffusionXLPipeline.save_lora_weights(folder, **kwargs, weight_name=LORA_WEIGHT_NAME,
                                                safe_serialization=True)
    file = folder / LORA_WEIGHT_NAME
    if config is not None:  # the training config inside the artifact, next to diffusers' adapter metadata
        with safe_open(str(file), framework="pt") as fh:
            header, tensors = dict(fh.metadata() or {}), {k: fh.get_tensor(k) for k in fh.keys()}
        save_file(tensors, str(file), metadata=header | {"studio_lora_config": json.dumps(config)})
    return file


def load_lora_into(path: str | Path, unet, text_encoders=()) -> None:
    """Copy a diffusers-format LoRA file (ours: a checkpoint, an output, ``init_lora``) into the ``default``
    adapters of ``unet`` / text encoders; ValueError for a corrupt file or one made for another architecture.
    Text-encoder adapters the file does not have keep their fresh initialisation (a UNet LoRA as ``init_lora`` of a
    run that adds text-encoder LoRA)."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = lora_weight_file(path)
    try:
        state = load_file(str(file))
    except Exception as err:
        raise ValueError(f"LoRA {str(path)!r} is not a valid .safetensors file ({err})") from err
    models = dict(zip(PREFIXES, (unet, *text_encoders)))
    unknown = sorted({k.split(".")[0] for k in state} - set(models))
    if unknown or not state:
        raise ValueError(f"LoRA {str(path)!r} has no weights for this run's adapters (prefixes {unknown or 'none'}; "
                         f"expected {list(models)})")
    for prefix, model in models.items():
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if not sub and prefix != "unet":
            continue
        sub = convert_unet_state_dict_to_peft(sub) if prefix == "unet" else \
            convert_state_dict_to_peft(convert_state_dict_to_diffusers(sub))
        try:
            result = set_peft_model_state_dict(model, sub, adapter_name="default")
        except RuntimeError as err:
            raise ValueError(f"LoRA {str(path)!r} does not fit this model's architecture or rank ({prefix}): "
                             f"{str(err).splitlines()[0]}") from err
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise ValueError(f"LoRA {str(path)!r} does not fit this model's architecture or targets ({prefix}): "
                             f"{len(result.unexpected_keys)} unexpected and {len(missing)} missing LoRA tensors, e.g. "
                             f"{(list(result.unexpected_keys) + missing)[:2]}")


def port_lora(lora: str | Path, student: str | Path, out_dir: str | Path) -> Path:
    """A teacher's LoRA re-keyed for a student made by the layer-removal engine: every kept student module gets the
    adapter of the teacher module it was copied from (``name_map.json``, student -> teacher), adapters of removed
    modules are dropped. Loading the teacher's file as is would pair renumbered layers by name (student
    transformer layer 1 is teacher layer 3 in the SSD-1B recipe). Text-encoder adapters are copied unchanged."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from studio.loading import resolve_spec
    from studio.removal import map_key

    folder = Path(student)
    if not folder.is_dir():
        folder = Path(resolve_spec(str(student)).source)
    map_file = folder / "name_map.json"
    if not map_file.exists():
        raise ValueError(f"student {str(student)!r} has no name_map.json (only students exported by the layer-removal "
                         f"engine or the distillation trainer can take a teacher's LoRA)")
    teacher_to_student = {}
    for student_prefix, teacher_prefix in json.loads(map_file.read_text()).items():
        if teacher_to_student.setdefault(teacher_prefix, student_prefix) != student_prefix:
            raise ValueError(f"{map_file}: teacher module {teacher_prefix} feeds two student modules")
    file = lora_weight_file(lora)
    try:
        with safe_open(str(file), framework="pt") as fh:
            header, tensors = dict(fh.metadata() or {}), {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:
        raise ValueError(f"LoRA {str(lora)!r} is not a valid .safetensors file ({err})") from err
    ported = {}
    for key, value in tensors.items():
        if not key.startswith("unet."):
            ported[key] = value
            continue
        try:
            ported["unet." + map_key(key[5:], teacher_to_student)] = value
        except KeyError:  # a module the student removed
            continue
    kept = sum(k.startswith("unet.") for k in ported)
    if not kept:
        raise ValueError(f"LoRA {str(lora)!r}: none of its UNet adapters is on a module the student kept")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header["studio_ported_from"] = json.dumps({"lora": str(file), "student": str(folder),
                                               "unet_tensors_kept": kept,
                                               "unet_tensors_dropped": sum(k.startswith("unet.") for k in tensors)
                                               - kept})
    save_file(ported, str(out / LORA_WEIGHT_NAME), metadata=header)
    return out / LORA_WEIGHT_NAME
