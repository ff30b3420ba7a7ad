"""Sampler names as AUTOMATIC1111 users know them, mapped to diffusers schedulers.

    pipe.scheduler = make_scheduler("DPM++ 2M Karras", pipe.scheduler.config)
"""
from __future__ import annotations

from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler, TCDScheduler, UniPCMultistepScheduler)

SCHEDULERS = {
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    # latents are never clipped to [-1, 1]: SDXL's own config says clip_sample false, a config without the key (the
    # demo family's Euler config) would otherwise get DDIM's default True and ruin every image
    "DDIM": (DDIMScheduler, {"clip_sample": False}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "LCM": (LCMScheduler, {}),  # for few-step (LCM) models and LoRAs
    # trajectory-consistency sampling (arXiv 2402.19159) of a consistency model; the pipelines' eta 0 = gamma 0: the
    # deterministic multistep consistency sampler (each step re-noises with the model's own noise estimate)
    "TCD": (TCDScheduler, {}),
}
CONSISTENCY_SAMPLERS = ("LCM", "TCD")  # take a few-step card's skipping schedule (original_inference_steps)


def make_scheduler(name: str, base_config):
    """A fresh scheduler of kind ``name`` with the model's own noise schedule (betas, prediction type)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base_config, **overrides)
