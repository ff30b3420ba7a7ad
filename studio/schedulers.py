"""Sampler names as AUTOMATIC1111 users know them, mapped to diffusers schedulers.

    pipe.scheduler = make_scheduler("DPM++ 2M Karras", pipe.scheduler.config)
"""
from __future__ import annotations

from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler, UniPCMultistepScheduler)

SCHEDULERS = {
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "DDIM": (DDIMScheduler, {}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "LCM": (LCMScheduler, {}),  # for few-step (LCM) models and LoRAs
}


def make_scheduler(name: str, base_config):
    """A fresh scheduler of kind ``name`` with the model's own noise schedule (betas, prediction type)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base_config, **overrides)
