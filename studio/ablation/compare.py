"""Full vs ablated model on the same prompts and seeds: images, latency, PSNR / SSIM, prompt fidelity.

    cmp = compare_ablation(pipe, config_plan(config, pipe.unet.config), config)
    cmp.summary()   # Δparams, ΔMACs, latency ratio, mean SSIM / PSNR / fidelity
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from studio.ablation.config import AblationConfig
from studio.ablation.cost import plan_cost
from studio.ablation.metrics import fidelity, psnr, ssim
from studio.generation import GenerateRequest, generate
from studio.removal import RemovalPlan, ablate, build_student, runtime_modules

OnStep = Callable[[int, int, dict], None]
ShouldStop = Callable[[], bool]


@dataclass
class AblationComparison:
    """Full vs ablated model on every prompt × seed pair of the config (lists are in that order)."""

    plan: RemovalPlan
    cost: dict  # plan_cost(): kind, params, student_params, delta_params, macs, student_macs, delta_macs
    pairs: list[tuple[str, int]]  # (prompt, seed)
    full_images: list[Image.Image]
    ablated_images: list[Image.Image]
    full_latency_s: float  # summed over the pairs
    ablated_latency_s: float
    psnr: list[float]
    ssim: list[float]
    full_fidelity: list[float | None] = field(default_factory=list)
    ablated_fidelity: list[float | None] = field(default_factory=list)
    full_latencies: list[float] = field(default_factory=list)  # per image (the sums above are over these)
    ablated_latencies: list[float] = field(default_factory=list)

    def latency_medians(self, min_runs: int = 3) -> tuple[float, float] | None:
        """Median seconds per image (full, ablated) when each side has ``min_runs`` images, else None: one or two
        wall-clock runs on a shared machine are noise, not a speed-up."""
        if min(len(self.full_latencies), len(self.ablated_latencies)) < min_runs:
            return None
        return float(np.median(self.full_latencies)), float(np.median(self.ablated_latencies))

    @property
    def latency_ratio(self) -> float:
        """Ablated latency / full latency (< 1: faster). Whole-pipeline wall time, text encoders and VAE included."""
        return self.ablated_latency_s / self.full_latency_s

    def summary(self) -> dict:
        """JSON-ready numbers (images left out; PSNR of identical images is ``inf``)."""
        def mean(xs):
            xs = [x for x in xs if x is not None]
            return float(np.mean(xs)) if xs else None
        return {"plan": self.plan.to_dict(), **self.cost, "latency_ratio": self.latency_ratio,
                "full_latency_s": self.full_latency_s, "ablated_latency_s": self.ablated_latency_s,
                "psnr": mean(self.psnr), "ssim": mean(self.ssim), "full_fidelity": mean(self.full_fidelity),
                "ablated_fidelity": mean(self.ablated_fidelity), "pairs": [list(p) for p in self.pairs]}


def pairs_of(config: AblationConfig) -> list[tuple[str, int]]:
    """Every (prompt, seed) of the config, prompts outer."""
    return [(p, s) for p in config.prompts for s in config.seeds]


def resolution_of(pipe: StableDiffusionXLPipeline, config: AblationConfig) -> int:
    return config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor


def text_tokens(pipe: StableDiffusionXLPipeline) -> int:
    return pipe.tokenizer.model_max_length if pipe.tokenizer is not None else 77


@contextlib.contextmanager
def plan_applied(pipe: StableDiffusionXLPipeline, plan: RemovalPlan | None, *, prefer_student: bool):
    """The pipeline with ``plan`` applied: a pipeline view on a real student (``build_student``: teacher weights
    copied; sharing the text encoders, VAE and scheduler) or the teacher inside ``ablate`` (units skipped in place).
    ``prefer_student`` picks the student when both can express the plan; a plan only one of them can express uses
    that one."""
    if plan is None:
        yield pipe
        return
    try:
        runtime_modules(dict(pipe.unet.config), plan)
        runtime = True
    except ValueError:  # pairs and levels change shapes: only a real student
        runtime = False
    if runtime and not prefer_student:
        with ablate(pipe.unet, plan):
            yield pipe
        return
    try:
        student, _ = build_student(pipe.unet, plan)
    except ValueError:  # runtime-only plan
        with ablate(pipe.unet, plan):
            yield pipe
        return
    yield StableDiffusionXLPipeline(**{**pipe.components, "unet": student.eval()},
                                    force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)


def run_pairs(pipe: StableDiffusionXLPipeline, config: AblationConfig, *, model_name: str, on_step=None,
              should_stop=None) -> list:
    """``studio.generation.generate`` of every (prompt, seed) pair of the config; one GenerateResult each."""
    return [generate(pipe, GenerateRequest(prompt=p, seed=s, steps=config.steps, guidance=config.guidance,
                                           width=config.resolution, height=config.resolution),
                     model_name=model_name, on_step=on_step, should_stop=should_stop) for p, s in pairs_of(config)]


def compare_ablation(pipe: StableDiffusionXLPipeline, plan: RemovalPlan, config: AblationConfig, *,
                     on_step: OnStep | None = None, should_stop: ShouldStop | None = None) -> AblationComparison:
    """Generate every prompt × seed of ``config`` with the full model and with ``plan`` applied.

    A config-expressible plan runs a real student (``build_student``: teacher weights copied) in a pipeline view
    sharing the text encoders, VAE and scheduler; a runtime-only plan runs the teacher inside ``ablate``. Progress
    goes to ``on_step(step, total, info)`` per generation (``info["model"]`` is "full" or "ablated");
    ``should_stop`` cancels (GenerationCancelled).
    """
    cost = plan_cost(pipe.unet.config, plan, resolution=resolution_of(pipe, config),
                     vae_scale_factor=pipe.vae_scale_factor, text_tokens=text_tokens(pipe))
    pairs = pairs_of(config)
    full = run_pairs(pipe, config, model_name="full", on_step=on_step, should_stop=should_stop)
    with plan_applied(pipe, plan, prefer_student=True) as view:
        ablated = run_pairs(view, config, model_name="ablated", on_step=on_step, should_stop=should_stop)
    fi, ai = [r.images[0] for r in full], [r.images[0] for r in ablated]
    return AblationComparison(
        plan=plan, cost=cost, pairs=pairs, full_images=fi, ablated_images=ai,
        full_latency_s=sum(r.stats.latency_s for r in full), ablated_latency_s=sum(r.stats.latency_s for r in ablated),
        psnr=[psnr(a, b) for a, b in zip(fi, ai)], ssim=[ssim(a, b) for a, b in zip(fi, ai)],
        full_fidelity=[fidelity(im, p) for im, (p, _) in zip(fi, pairs)],
        ablated_fidelity=[fidelity(im, p) for im, (p, _) in zip(ai, pairs)],
        full_latencies=[r.stats.latency_s for r in full], ablated_latencies=[r.stats.latency_s for r in ablated])
