"""Few-step models (latent consistency students, LCM-LoRAs, conditional few-step models) as the studio loads them:
their recommended scheduler, steps and guidance, and a pipeline over a base model's components.

    rec = recommended_settings("assets/demo/lcm")          # {"scheduler": "LCM", "steps": 4, "guidance": ...}
    pipe = load_fewstep_pipeline("assets/demo/lcm", teacher_pipe)
    image = pipe(prompt, num_inference_steps=rec["steps"], guidance_scale=rec["guidance"]).images[0]

A folder output carries ``studio_model.json`` (``scheduler``, ``scheduler_config``, ``default_steps``,
``default_guidance``); an LCM-LoRA file carries the same in the ``fewstep`` entry of its safetensors header.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from studio.registry import SPEC_FILE
from studio.lora import lora_weight_file

# the condition adapter of a conditional model: its kind (FewStepConfig.adapter) -> its subfolder
ADAPTER_FOLDERS = {"controlnet": "controlnet", "t2i-adapter": "adapter"}


def lcm_scheduler(base_config, original_inference_steps: int = 50):
    """``LCMScheduler`` on a model's noise schedule, its skipping schedule as the student was distilled."""
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(base_config, original_inference_steps=original_inference_steps)


def low_res(image, resolution: int, size: int):
    """The condition of super-resolution: ``image`` resized to cover the training square and centre-cropped (as ``training.data`` does), then
    box-downsampled to ``size`` x ``size`` (a PIL image; pipelines upsample it with their control image processor)."""
    from PIL import Image, ImageOps

    square = image.convert("RGB")
    if square.size != (resolution, resolution):
        square = ImageOps.fit(square, (resolution, resolution), Image.BICUBIC)
    return square.resize((size, size), Image.BOX)


def control_image(images: list, size: int):
    """Condition images -> the adapter's input as both SDXL conditional pipelines prepare it (ControlNet's control
    image processor and the T2I-Adapter's preprocessing agree): resized to ``size`` x ``size`` with Lanczos, RGB in
    [0, 1], a (batch, 3, size, size) tensor."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(do_convert_rgb=True, do_normalize=False)
    return processor.preprocess(list(images), height=size, width=size)


def adapter_kind(folder: str | Path) -> str | None:
    """Which condition adapter a model folder holds ("controlnet" / "t2i-adapter"), None for none; a folder with both
    is refused (which one its card means would be a guess)."""
    kinds = [kind for kind, sub in ADAPTER_FOLDERS.items() if (Path(folder) / sub).is_dir()]
    if len(kinds) > 1:
        found = ", ".join(ADAPTER_FOLDERS[k] + "/" for k in kinds)
        raise ValueError(f"{folder} holds two condition adapters ({found}); a conditional model folder keeps one")
    return kinds[0] if kinds else None


def conditional_pipeline(parts: dict, unet, adapter, scheduler):
    """The SDXL pipeline of a conditional model: ``StableDiffusionXLAdapterPipeline`` for a T2I-Adapter,
    ``StableDiffusionXLControlNetPipeline`` for a ControlNet; ``parts`` = the VAE, text encoders and tokenizers."""
    from diffusers import StableDiffusionXLAdapterPipeline, StableDiffusionXLControlNetPipeline, T2IAdapter

    if isinstance(adapter, T2IAdapter):
        return StableDiffusionXLAdapterPipeline(**parts, unet=unet, adapter=adapter, scheduler=scheduler)
    return StableDiffusionXLControlNetPipeline(**parts, unet=unet, controlnet=adapter, scheduler=scheduler)


def condition_adapter(pipe):
    """The condition adapter of a conditional pipeline (its ``controlnet`` or T2I ``adapter``); None for the others."""
    controlnet = getattr(pipe, "controlnet", None)
    return controlnet if controlnet is not None else getattr(pipe, "adapter", None)


def load_adapter(folder: str | Path, **kwargs):
    """The condition adapter saved in a conditional model folder (``ADAPTER_FOLDERS``), safetensors only."""
    from diffusers import ControlNetModel, T2IAdapter

    kind = adapter_kind(folder)
    if kind is None:
        raise ValueError(f"{folder} holds no condition adapter (one of {sorted(ADAPTER_FOLDERS.values())}/)")
    cls = T2IAdapter if kind == "t2i-adapter" else ControlNetModel
    return cls.from_pretrained(Path(folder) / ADAPTER_FOLDERS[kind], use_safetensors=True, **kwargs)


def recommended_settings(source: str | Path) -> dict:
    """Scheduler (``scheduler``, ``scheduler_config``), ``steps`` and ``guidance`` a few-step output recommends: from
    its ``studio_model.json``, or for an LCM-LoRA file from the ``fewstep`` entry of its safetensors header."""
    from safetensors import safe_open

    source = Path(source)
    if (source / SPEC_FILE).exists():
        spec = json.loads((source / SPEC_FILE).read_text())
        return {"scheduler": spec.get("scheduler", "LCM"), "scheduler_config": spec.get("scheduler_config", {}),
                "steps": spec.get("default_steps", 4), "guidance": spec.get("default_guidance", 1.0)}
    with safe_open(str(lora_weight_file(source)), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("studio_lora_config", "{}"))
    return {"scheduler": "LCM", "scheduler_config": {}, "steps": 4, "guidance": 1.0} | meta.get("fewstep", {})


def load_fewstep_pipeline(source: str | Path, base_pipe, *, scheduler: str | None = None, copy_unet: bool = True):
    """A pipeline for a few-step output over ``base_pipe``'s components: a full-student folder (``unet/``), an
    LCM-LoRA file or folder (fused into a copy of the base UNet), or a conditional folder (``controlnet/`` or
    ``adapter/`` + LoRA: ``conditional_pipeline``). Scheduler: the output's recommendation (LCM or TCD on its skipping
    schedule) unless ``scheduler`` names another of ``studio.schedulers`` (LCM and TCD keep the skipping schedule).
    ``copy_unet=False`` fuses a LoRA into ``base_pipe``'s own UNet (a fresh one the caller does not keep, as the model
    cache's)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from studio.schedulers import CONSISTENCY_SAMPLERS, make_scheduler

    source, rec = Path(source), recommended_settings(source)
    parts = {k: getattr(base_pipe, k) for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")}
    name = scheduler or rec["scheduler"]
    # the card's skipping schedule (original_inference_steps) goes with the consistency samplers
    config = dict(base_pipe.scheduler.config) | (rec.get("scheduler_config", {}) if name in CONSISTENCY_SAMPLERS else {})
    parts["scheduler"] = make_scheduler(name, config)
    if (source / "unet").is_dir():
        pipe = StableDiffusionXLPipeline(**parts, unet=UNet2DConditionModel.from_pretrained(source / "unet").float())
    else:
        # the LoRA is fused into a copy; the base pipeline stays as it was
        unet = copy.deepcopy(base_pipe.unet) if copy_unet else base_pipe.unet
        if adapter_kind(source):
            pipe = conditional_pipeline(parts, unet, load_adapter(source).float(), parts.pop("scheduler"))
        else:
            pipe = StableDiffusionXLPipeline(**parts, unet=unet)
        lora = lora_weight_file(source)
        if lora.exists():
            pipe.load_lora_weights(str(lora), adapter_name="fewstep")
            pipe.fuse_lora(adapter_names=["fewstep"])
            pipe.unload_lora_weights()
    pipe.set_progress_bar_config(disable=True)
    return pipe
