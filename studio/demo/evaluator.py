"""Analytic quality metric for the demo family: does an image show the shape and colours its prompt names?

    result = evaluate(image, "a red circle on a blue background")   # result.correct["shape"] -> True / False
    report = evaluate_batch(images, prompts)                        # report["accuracy"]["background"] -> 0.97

No learned weights. The background is the majority nearest-palette colour of the image border; the shape colour is
the majority nearest-palette colour of the pixels that stand out most from the background; the shape mask is the
largest 4-connected region of pixels closer to the shape colour than to the background colour, and the shape class
is the template (rendered exactly as ``studio.demo.shapes`` draws it, stretched to the mask's bounding box) with the
highest IoU against that mask. Chance levels for images unrelated to their prompts: background 1/8, shape colour
about 1/7 (it is never the background colour), shape 1/6 (see ``CHANCE``).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from studio.demo.shapes import COLOURS, PALETTE, SHAPES, SUPERSAMPLE, draw_shape

ATTRIBUTES: tuple[str, ...] = ("background", "colour", "shape")
CHANCE: dict[str, float] = {"background": 1 / len(COLOURS), "colour": 1 / (len(COLOURS) - 1),
                            "shape": 1 / len(SHAPES)}
_PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # (8, 3)
_PROMPT = re.compile(r"^\s*an?\s+(\S+)\s+(\S+)\s+on\s+an?\s+(\S+)\s+background\s*$", re.IGNORECASE)


# config

@dataclass(frozen=True)
class EvaluatorConfig:
    """Knobs of the analysis; defaults are tuned on clean, blurred and noisy ground truth."""

    size: int = 64  # images are resized to size x size before analysis
    border: int = 3  # width in pixels of the frame whose colour votes for the background
    min_contrast: float = 40.0  # RGB distance from the background for a pixel to count as "not background"
    core_ratio: float = 0.7  # shape-colour votes come from pixels at >= core_ratio of the strongest contrast
    min_shape_pixels: int = 12  # fewer candidate pixels than this = no shape found

    def __post_init__(self):
        if not 16 <= self.size <= 512:
            raise ValueError(f"EvaluatorConfig.size must be in [16, 512]; got {self.size}")
        if not 1 <= self.border <= self.size // 4:
            raise ValueError(f"EvaluatorConfig.border must be in [1, {self.size // 4}]; got {self.border}")
        if not 0 < self.min_contrast < 255:
            raise ValueError(f"EvaluatorConfig.min_contrast must be in (0, 255); got {self.min_contrast}")
        if not 0 < self.core_ratio <= 1:
            raise ValueError(f"EvaluatorConfig.core_ratio must be in (0, 1]; got {self.core_ratio}")
        if self.min_shape_pixels < 1:
            raise ValueError(f"EvaluatorConfig.min_shape_pixels must be >= 1; got {self.min_shape_pixels}")


@dataclass(frozen=True)
class PromptSpec:
    """The three attributes a demo prompt names."""

    shape: str
    colour: str
    background: str


@dataclass
class Detection:
    """What the analysis found in an image (``None`` colour/shape when no shape stands out)."""

    background: str
    colour: str | None
    shape: str | None
    background_votes: dict[str, float]  # share of border pixels nearest to each palette colour
    colour_votes: dict[str, float]  # share of core shape pixels nearest to each palette colour
    shape_iou: dict[str, float]  # IoU of the mask with each shape template
    mask_fraction: float  # share of the image covered by the shape mask
    mask: np.ndarray = field(repr=False)  # (size, size) bool


@dataclass
class EvalResult:
    """Per-attribute correctness of one image and the score the prompted value got."""

    prompt: PromptSpec
    detection: Detection
    correct: dict[str, bool]  # attribute -> detected value == prompted value
    scores: dict[str, float]  # background/colour: vote share of the prompted colour; shape: IoU of its template

    @property
    def all_correct(self) -> bool:
        return all(self.correct.values())


# prompt parsing

def parse_prompt(prompt: str) -> PromptSpec:
    """Parse ``"a <colour> <shape> on a <background> background"``; raises ValueError naming what is wrong."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string; got {type(prompt).__name__}")
    m = _PROMPT.match(prompt)
    if m is None:
        raise ValueError(f"prompt {prompt!r} does not match 'a <colour> <shape> on a <colour> background'")
    colour, shape, background = (g.lower() for g in m.groups())
    if colour not in PALETTE:
        raise ValueError(f"prompt {prompt!r}: unknown shape colour {colour!r}; expected one of {COLOURS}")
    if shape not in SHAPES:
        raise ValueError(f"prompt {prompt!r}: unknown shape {shape!r}; expected one of {SHAPES}")
    if background not in PALETTE:
        raise ValueError(f"prompt {prompt!r}: unknown background colour {background!r}; expected one of {COLOURS}")
    if colour == background:
        raise ValueError(f"prompt {prompt!r}: shape colour and background colour must differ")
    return PromptSpec(shape, colour, background)


# helpers

def _to_array(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) float32 RGB in [0, 255] from a PIL image or a uint8 / [0, 1] float array."""
    if isinstance(image, np.ndarray):
        arr = image.astype(np.float32)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"image array must be (H, W, 3); got {arr.shape}")
        if image.dtype != np.uint8:
            arr = np.clip(arr, 0, 1) * 255
        image = Image.fromarray(arr.round().astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _nearest_palette(pixels: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest palette colour of each (..., 3) pixel."""
    d = ((pixels[..., None, :] - _PALETTE_RGB) ** 2).sum(-1)
    return d.argmin(-1)


def _votes(labels: np.ndarray) -> dict[str, float]:
    counts = Counter(labels.ravel().tolist())
    total = max(1, labels.size)
    return {c: counts.get(i, 0) / total for i, c in enumerate(COLOURS)}


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a bool mask (min-label propagation; masks here are <= 512 px)."""
    if not mask.any():
        return mask
    big = mask.size
    labels = np.where(mask, np.arange(big).reshape(mask.shape), big)
    while True:
        prev = labels
        padded = np.pad(labels, 1, constant_values=big)
        neigh = np.minimum.reduce([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:],
                                   labels])
        labels = np.where(mask, neigh, big)
        if np.array_equal(labels, prev):
            break
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[counts.argmax()]


def shape_template(shape: str, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Bool mask of ``shape`` drawn into ``box`` exactly as the synthetic data draws it (coverage >= 50 %)."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw_shape(ImageDraw.Draw(big), shape, tuple(v * SUPERSAMPLE for v in box), 255, 0)
    return np.asarray(big.resize((size, size), Image.BOX)) >= 128


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


# analysis

def analyze(image: Image.Image | np.ndarray, config: EvaluatorConfig | None = None) -> Detection:
    """Detect background colour, shape colour and shape class of one image."""
    cfg = config or EvaluatorConfig()
    px = _to_array(image, cfg.size)
    b = cfg.border
    frame = np.concatenate([px[:b].reshape(-1, 3), px[-b:].reshape(-1, 3), px[b:-b, :b].reshape(-1, 3),
                            px[b:-b, -b:].reshape(-1, 3)])
    frame_labels = _nearest_palette(frame)
    bg_votes = _votes(frame_labels)
    bg_idx = COLOURS.index(max(bg_votes, key=bg_votes.get))
    bg_rgb = np.median(frame[frame_labels == bg_idx], axis=0)

    contrast = np.sqrt(((px - bg_rgb) ** 2).sum(-1))  # (H, W) distance from the measured background
    candidates = contrast > cfg.min_contrast
    empty = np.zeros(contrast.shape, dtype=bool)
    if candidates.sum() < cfg.min_shape_pixels:
        return Detection(COLOURS[bg_idx], None, None, bg_votes, {c: 0.0 for c in COLOURS},
                         {s: 0.0 for s in SHAPES}, 0.0, empty)
    core = contrast >= cfg.core_ratio * np.percentile(contrast[candidates], 95)
    core_labels = _nearest_palette(px[core])
    core_labels = core_labels[core_labels != bg_idx]
    if core_labels.size == 0:
        return Detection(COLOURS[bg_idx], None, None, bg_votes, {c: 0.0 for c in COLOURS},
                         {s: 0.0 for s in SHAPES}, 0.0, empty)
    colour_votes = _votes(core_labels)
    fg_idx = COLOURS.index(max(colour_votes, key=colour_votes.get))
    fg_rgb = np.median(px[core][_nearest_palette(px[core]) == fg_idx], axis=0)

    # two-class split along the background -> shape colour axis, then the largest connected region
    axis = fg_rgb - bg_rgb
    t = ((px - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6)
    mask = _largest_component(t > 0.5)
    ys, xs = np.nonzero(mask)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    ious = {s: _iou(mask, shape_template(s, box, cfg.size)) for s in SHAPES}
    return Detection(COLOURS[bg_idx], COLOURS[fg_idx], max(ious, key=ious.get), bg_votes, colour_votes, ious,
                     float(mask.mean()), mask)


def evaluate(image: Image.Image | np.ndarray, prompt: str, config: EvaluatorConfig | None = None) -> EvalResult:
    """Score one image against its prompt: per-attribute correctness and the prompted values' scores."""
    spec = parse_prompt(prompt)
    det = analyze(image, config)
    correct = {"background": det.background == spec.background, "colour": det.colour == spec.colour,
               "shape": det.shape == spec.shape}
    scores = {"background": det.background_votes[spec.background], "colour": det.colour_votes[spec.colour],
              "shape": det.shape_iou[spec.shape]}
    return EvalResult(spec, det, correct, scores)


def evaluate_batch(images: list[Image.Image | np.ndarray], prompts: list[str],
                   config: EvaluatorConfig | None = None) -> dict:
    """Per-attribute accuracy (and mean score) over (image, prompt) pairs.

    Returns:
        `dict`: ``n``, ``accuracy`` (attribute -> fraction correct, plus ``all``), ``mean_score`` (attribute ->
        mean score of the prompted value), ``chance`` (``CHANCE``) and ``per_item`` (one dict per pair).
    """
    if len(images) != len(prompts):
        raise ValueError(f"evaluate_batch: got {len(images)} images but {len(prompts)} prompts")
    if not images:
        raise ValueError("evaluate_batch: need at least one (image, prompt) pair")
    results = [evaluate(im, p, config) for im, p in zip(images, prompts)]
    n = len(results)
    accuracy = {a: sum(r.correct[a] for r in results) / n for a in ATTRIBUTES}
    accuracy["all"] = sum(r.all_correct for r in results) / n
    return {
        "n": n, "accuracy": accuracy,
        "mean_score": {a: float(np.mean([r.scores[a] for r in results])) for a in ATTRIBUTES},
        "chance": dict(CHANCE),
        "per_item": [{"prompt": p, "detected": {"background": r.detection.background, "colour": r.detection.colour,
                                                "shape": r.detection.shape}, "correct": r.correct}
                     for p, r in zip(prompts, results)],
    }


def demo_accuracy(images: list, prompts: list[str], config: EvaluatorConfig | None = None) -> float | None:
    """Share of images with all three attributes right, over the prompts in the demo grammar (others are skipped);
    None when no prompt parses. What training validation logs."""
    scored = []
    for image, prompt in zip(images, prompts):
        try:
            parse_prompt(prompt)
        except ValueError:
            continue
        scored.append((image, prompt))
    if not scored:
        return None
    return evaluate_batch([i for i, _ in scored], [p for _, p in scored], config)["accuracy"]["all"]
