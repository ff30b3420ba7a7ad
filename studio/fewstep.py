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
    LCM-LoRA file or folder (fused into a copy of the base UNet), or a conditional folder (``controlnet/`` + LoRA:
    a ``StableDiffusionXLControlNetPipeline``). Scheduler: the output's recommendation (LCM or TCD on its skipping
    schedule) unless ``scheduler`` names another of ``studio.schedulers`` (LCM and TCD keep the skipping schedule).
    ``copy_unet=False`` fuses a LoRA into ``base_pipe``'s own UNet (a fresh one the caller does not keep, as the model
    cache's)."""
    from diffusers import (ControlNetModel, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)

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
        if (source / "controlnet").is_dir():
            controlnet = ControlNetModel.from_pretrained(source / "controlnet", use_safetensors=True).float()
            pipe = StableDiffusionXLControlNetPipeline(**parts, unet=unet, controlnet=controlnet)
        else:
            pipe = StableDiffusionXLPipeline(**parts, unet=unet)
        lora = lora_weight_file(source)
        if lora.exists():
            pipe.load_lora_weights(str(lora), adapter_name="fewstep")
            pipe.fuse_lora(adapter_names=["fewstep"])
            pipe.unload_lora_weights()
    pipe.set_progress_bar_config(disable=True)
    return pipe
