"""Scoring demo-family pipelines: render a fixed (prompt, seed) set, score it with the analytic evaluator, and time
pipelines side by side.

    report, images = evaluate_pipeline(pipe, eval_prompts(96, "train"))          # accuracies per attribute
    scores = concept_scores(pipe, "orange", n_concept=96, n_original=96)          # a LoRA's new word, and the rest
    latency = time_interleaved({"teacher": t, "student": s}, repeats=5)           # medians from one run

Every image is a pure function of (model, prompt, seed, steps, guidance): each prompt has its own generator, so a
batch size or an evaluation order does not change what is drawn.
"""
from __future__ import annotations

import statistics
import time

import torch

from studio.demo.concepts import concept_prompts, evaluate_concept
from studio.demo.evaluator import evaluate_batch
from studio.demo.shapes import caption, eval_prompts

BATCH = 8  # prompts per pipeline call


@torch.no_grad()
def render(pipe, pairs: list[tuple[str, int]], *, steps: int = 20, guidance: float = 5.0,
           batch: int = BATCH) -> list:
    """One image per (prompt, seed) pair at the pipeline's native size."""
    images = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        images += pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                       generator=[torch.Generator().manual_seed(s) for _, s in chunk]).images
    return images


def evaluate_pipeline(pipe, pairs: list[tuple[str, int]], *, steps: int = 20, guidance: float = 5.0) -> tuple:
    """(report, images): ``studio.demo.evaluator.evaluate_batch`` of the rendered pairs without the per-item list."""
    images = render(pipe, pairs, steps=steps, guidance=guidance)
    report = evaluate_batch(images, [p for p, _ in pairs])
    report.pop("per_item")
    return report | {"steps": steps, "guidance_scale": guidance}, images


def concept_scores(pipe, concept: str, *, n_concept: int = 48, n_original: int = 48, steps: int = 20,
                   guidance: float = 5.0) -> dict:
    """Prompts naming ``concept`` scored with ``evaluate_concept``, the original train-distribution prompts
    (``eval_prompts``) with the standard evaluator; the same prompts and seeds on every call."""
    concept_set, original = concept_prompts(n_concept, concept), eval_prompts(n_original, "train")
    concept_report = evaluate_concept(render(pipe, concept_set, steps=steps, guidance=guidance),
                                      [p for p, _ in concept_set])
    original_report, _ = evaluate_pipeline(pipe, original, steps=steps, guidance=guidance)
    return {"concept": concept, "n_concept": n_concept, "concept_accuracy": concept_report["accuracy"],
            "chance": concept_report["chance"], "n_original": n_original,
            "original_accuracy": original_report["accuracy"], "steps": steps, "guidance": guidance}


@torch.no_grad()
def time_interleaved(pipes: dict, *, steps: int = 20, guidance: float = 5.0, repeats: int = 5,
                     warmup: int = 1) -> dict[str, dict]:
    """Seconds for one image (batch 1, CFG on) per pipeline: median and min of ``repeats`` runs after ``warmup``,
    the pipelines taking turns within each repeat so a change of machine load hits all of them alike."""
    prompt = caption("star", "red", "blue")
    times = {name: [] for name in pipes}
    for i in range(warmup + repeats):
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator().manual_seed(0))
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "runs": t} for name, t in times.items()}


def save_grid(images: list, path, cols: int = 8, scale: int = 2) -> None:
    """Tile PIL images into one PNG (nearest-neighbour upscaled by ``scale``)."""
    from PIL import Image

    w, h = images[0].size
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    grid.resize((cols * w * scale, rows * h * scale), Image.NEAREST).save(path)
