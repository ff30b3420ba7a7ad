"""Concepts the demo family never saw: a new shape ("heart") and a new colour ("orange"), drawn like the synthetic
shapes, with prompts and an evaluator extension that scores them (the LoRA demo teaches them).

    image, caption, shape, colour, background = concept_sample(0, "orange")
    export_concept_data("data/lora-orange", 256, "orange", reg_count=256)   # an imagefolder
    report = evaluate_concept(images, [p for p, _ in concept_prompts(48, "orange")])
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from studio.demo import shapes
from studio.demo.evaluator import EvaluatorConfig, analyze

NEW_SHAPES = ("heart",)  # drawn by heart_polygon
NEW_COLOURS = {"orange": (245, 140, 20)}  # between red and yellow; the demo VAE decodes it on most backgrounds
CONCEPTS = NEW_SHAPES + tuple(NEW_COLOURS)


def heart_polygon(x0: float, y0: float, x1: float, y1: float, points: int = 64) -> list[tuple[float, float]]:
    """Outline of a heart (point down) stretched to the box, from the classic curve x = 16 sin^3 t,
    y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t."""
    pts = [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
           for t in (2 * math.pi * k / points for k in range(points))]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [(x0 + (px - min(xs)) / (max(xs) - min(xs)) * (x1 - x0),
             y0 + (py - min(ys)) / (max(ys) - min(ys)) * (y1 - y0)) for px, py in pts]


def _check_concept(concept: str) -> None:
    if concept not in CONCEPTS:
        raise ValueError(f"unknown demo concept {concept!r}; choose one of {CONCEPTS}")


def _backgrounds(colour: str) -> list[str]:
    """Palette backgrounds for a new colour: those at least 100 RGB apart (orange on yellow has too little contrast
    for the evaluator to find the shape)."""

    rgb = NEW_COLOURS[colour]
    return [c for c, v in shapes.PALETTE.items() if sum((a - b) ** 2 for a, b in zip(v, rgb)) ** 0.5 >= 100]


def concept_sample(index: int, concept: str = "heart", *, seed: int = 0, size: int = 64):
    """(image, caption, shape, colour, background) of sample ``index`` of a new shape (palette colours) or a new
    colour (the six known shapes): drawn as ``studio.demo.shapes`` draws (4x supersampled, same size and position
    ranges), a pure function of (concept, seed, index)."""

    _check_concept(concept)
    rng = np.random.default_rng([seed, 977, CONCEPTS.index(concept), index])
    if concept in NEW_SHAPES:
        shape = concept
        colour, background = (shapes.COLOURS[int(i)] for i in rng.choice(len(shapes.COLOURS), 2, replace=False))
    else:
        shape, colour = shapes.SHAPES[int(rng.integers(len(shapes.SHAPES)))], concept
        background = _backgrounds(concept)[int(rng.integers(len(_backgrounds(concept))))]
    side = float(rng.uniform(*shapes.SIZE_RANGE)) * size
    margin = size * 0.03
    x0, y0 = (float(rng.uniform(margin, size - margin - side)) for _ in range(2))
    k, fill = shapes.SUPERSAMPLE, NEW_COLOURS.get(colour) or shapes.PALETTE[colour]
    big = Image.new("RGB", (size * k, size * k), shapes.PALETTE[background])
    box = (x0 * k, y0 * k, (x0 + side) * k, (y0 + side) * k)
    if shape in NEW_SHAPES:
        ImageDraw.Draw(big).polygon(heart_polygon(*box), fill=fill)
    else:
        shapes.draw_shape(ImageDraw.Draw(big), shape, box, fill, shapes.PALETTE[background])
    return big.resize((size, size), Image.BOX), shapes.caption(shape, colour, background), shape, colour, background


def concept_records(count: int, concept: str = "heart", *, reg_count: int = 0, seed: int = 0, size: int = 64):
    """(file stem, PIL image, metadata) of ``count`` samples of ``concept`` plus ``reg_count`` images of the original
    data (synthetic train split: prior preservation by data mixing, so the other prompts keep working)."""

    for i in range(count):
        image, text, shape, colour, background = concept_sample(i, concept, seed=seed, size=size)
        yield f"{concept}_{i:05d}", image, {"text": text, "shape": shape, "colour": colour,
                                            "background": background, "concept": True}
    for i in range(reg_count):
        s = shapes.sample(i, "train", seed=seed + 1, size=size)
        yield f"reg_{i:05d}", s.image, {"text": s.text, "shape": s.shape, "colour": s.colour,
                                        "background": s.background, "concept": False}


def export_concept_data(out_dir: str | Path, count: int, concept: str = "heart", *, reg_count: int = 0,
                        seed: int = 0, size: int = 64) -> Path:
    """``concept_records`` as an imagefolder (PNG files + metadata.jsonl saying which image is which)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w") as f:
        for stem, image, meta in concept_records(count, concept, reg_count=reg_count, seed=seed, size=size):
            image.save(out / f"{stem}.png")
            f.write(json.dumps({"file_name": f"{stem}.png"} | meta) + "\n")
    return out


def concept_prompts(n: int, concept: str = "heart", *, seed: int = 4321) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs naming ``concept``, every combination of the other two attributes before any
    repeats."""

    _check_concept(concept)
    if concept in NEW_SHAPES:
        combos = [(concept, c, b) for c in shapes.COLOURS for b in shapes.COLOURS if c != b]
    else:
        combos = [(s, concept, b) for s in shapes.SHAPES for b in _backgrounds(concept)]
    order = [combos[i] for i in np.random.default_rng(seed).permutation(len(combos))] * (n // len(combos) + 1)
    return [(shapes.caption(*c), seed + i) for i, c in enumerate(order[:n])]


def evaluate_concept(images: list, prompts: list[str]) -> dict:
    """``studio.demo.evaluator`` extended by the demo concepts: the heart as a seventh shape template (IoU against the
    same mask), orange as a ninth colour (the majority nearest colour of the shape mask, background excluded)."""

    cfg, k = EvaluatorConfig(), shapes.SUPERSAMPLE
    names = list(shapes.PALETTE) + list(NEW_COLOURS)
    palette = np.array(list(shapes.PALETTE.values()) + list(NEW_COLOURS.values()), dtype=np.float32)
    hits = {"background": 0, "colour": 0, "shape": 0, "all": 0}
    for image, prompt in zip(images, prompts):
        colour, shape, background = prompt.split()[1], prompt.split()[2], prompt.split()[5]
        det = analyze(image, cfg)
        iou, found_colour, found_shape = dict(det.shape_iou), None, None
        if det.mask.any():
            ys, xs = np.nonzero(det.mask)
            big = Image.new("L", (cfg.size * k, cfg.size * k), 0)
            ImageDraw.Draw(big).polygon(heart_polygon(xs.min() * k, ys.min() * k, (xs.max() + 1) * k,
                                                      (ys.max() + 1) * k), fill=255)
            template = np.asarray(big.resize((cfg.size, cfg.size), Image.BOX)) >= 128
            iou["heart"] = float(np.logical_and(det.mask, template).sum() / np.logical_or(det.mask, template).sum())
            found_shape = max(iou, key=iou.get)
            px = np.asarray(image.convert("RGB").resize((cfg.size, cfg.size), Image.BILINEAR), dtype=np.float32)
            labels = ((px[det.mask][:, None, :] - palette) ** 2).sum(-1).argmin(-1)
            labels = labels[labels != names.index(det.background)]
            if labels.size:
                found_colour = names[int(np.bincount(labels).argmax())]
        ok = {"background": det.background == background, "colour": found_colour == colour,
              "shape": found_shape == shape}
        for key, value in (ok | {"all": all(ok.values())}).items():
            hits[key] += value
    return {"n": len(images), "accuracy": {key: v / max(1, len(images)) for key, v in hits.items()},
            "chance": {"shape": 1 / (len(shapes.SHAPES) + len(NEW_SHAPES)),
                       "colour": 1 / (len(names) - 1)}}

