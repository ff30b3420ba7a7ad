"""Deterministic captioned toy images: the demo family's data set ("a red circle on a blue background").

    python -m studio.demo.shapes --out data/demo_train --count 1000 --split train

Each sample is a flat-coloured shape (circle, square, triangle, star, ring, cross) on a flat background of another
palette colour, with random size (38-60 % of the image side) and position. Images are drawn at 4x resolution and
box-filtered down, so edges are anti-aliased. Twelve (shape, colour, background) combinations are held out of the
``train`` split and form the ``heldout`` split, to test compositional generalisation. Sample ``i`` of a split depends
only on ``(seed, split, i)``: the same seed gives identical bytes.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# constants

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
PALETTE: dict[str, tuple[int, int, int]] = {  # well separated in RGB (min pairwise distance > 110)
    "red": (220, 30, 30),
    "green": (40, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (245, 220, 40),
    "purple": (140, 40, 170),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
DEMO_WORDS: tuple[str, ...] = ("a", "on", "background") + SHAPES + COLOURS
SPLITS: tuple[str, ...] = ("train", "heldout")
SIZE_RANGE = (0.38, 0.60)  # shape bounding-box side as a fraction of the image side
RING_INNER = 0.5  # ring hole radius / outer radius
STAR_INNER = 0.5  # star inner radius / outer radius
CROSS_ARM = 0.36  # cross arm thickness / cross side
SUPERSAMPLE = 4

# held out of "train": each shape twice, every colour and background still seen in train with other partners
HELDOUT: tuple[tuple[str, str, str], ...] = (
    ("circle", "red", "blue"), ("circle", "white", "purple"),
    ("square", "green", "yellow"), ("square", "black", "cyan"),
    ("triangle", "blue", "white"), ("triangle", "yellow", "black"),
    ("star", "purple", "green"), ("star", "cyan", "red"),
    ("ring", "white", "black"), ("ring", "red", "green"),
    ("cross", "yellow", "purple"), ("cross", "blue", "cyan"),
)
ALL_COMBOS: tuple[tuple[str, str, str], ...] = tuple(
    (s, c, b) for s, c, b in itertools.product(SHAPES, COLOURS, COLOURS) if c != b)
TRAIN_COMBOS: tuple[tuple[str, str, str], ...] = tuple(c for c in ALL_COMBOS if c not in set(HELDOUT))


def caption(shape: str, colour: str, background: str) -> str:
    """The canonical prompt of a combination: ``"a red circle on a blue background"``."""
    return f"a {colour} {shape} on a {background} background"


def split_combos(split: str) -> tuple[tuple[str, str, str], ...]:
    """The (shape, colour, background) combinations that a split draws from."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return TRAIN_COMBOS if split == "train" else HELDOUT


def eval_prompts(n: int, split: str = "train", *, seed: int = 1234) -> list[tuple[str, int]]:
    """A fixed evaluation set: ``n`` (prompt, seed) pairs, combinations of ``split`` drawn without repeats until
    every one was used once (then again in a new order)."""
    combos = list(split_combos(split))
    rng = np.random.default_rng(seed)
    order = []
    while len(order) < n:
        order += [combos[i] for i in rng.permutation(len(combos))]
    return [(caption(*c), seed + i) for i, c in enumerate(order[:n])]


# config

@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate: the data set is a pure function of these fields."""

    seed: int = 0  # base seed; sample i of split s uses rng([seed, s, i])
    size: int = 64  # image side in pixels
    count: int = 1000  # number of samples export_imagefolder writes by default
    split: str = "train"  # "train" (all but HELDOUT) or "heldout"

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"SyntheticConfig.seed must be >= 0; got {self.seed}")
        if not 16 <= self.size <= 1024:
            raise ValueError(f"SyntheticConfig.size must be in [16, 1024]; got {self.size}")
        if self.count < 1:
            raise ValueError(f"SyntheticConfig.count must be >= 1; got {self.count}")
        if self.split not in SPLITS:
            raise ValueError(f"SyntheticConfig.split must be one of {SPLITS}; got {self.split!r}")


@dataclass(frozen=True)
class Sample:
    """One generated image with its caption and ground-truth attributes."""

    image: Image.Image
    text: str
    shape: str
    colour: str
    background: str
    box: tuple[float, float, float, float]  # shape bounding box (x0, y0, x1, y1) in pixels


# drawing

def shape_polygon(shape: str, x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    """Polygon outline of a polygonal shape stretched to the box (square, triangle, star, cross)."""
    w, h = x1 - x0, y1 - y0
    if shape == "square":
        unit = [(0, 0), (1, 0), (1, 1), (0, 1)]
    elif shape == "triangle":
        unit = [(0.5, 0), (1, 1), (0, 1)]
    elif shape == "cross":
        a, b = (1 - CROSS_ARM) / 2, (1 + CROSS_ARM) / 2
        unit = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    elif shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else STAR_INNER
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(ang), r * math.sin(ang)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        unit = [((px - min(xs)) / (max(xs) - min(xs)), (py - min(ys)) / (max(ys) - min(ys))) for px, py in pts]
    else:
        raise ValueError(f"shape_polygon: {shape!r} is not a polygonal shape")
    return [(x0 + u * w, y0 + v * h) for u, v in unit]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill, hole_fill):
    """Draw ``shape`` filling ``box`` (x0, y0, x1, y1); ``hole_fill`` paints the ring's hole."""
    x0, y0, x1, y1 = box
    if shape in ("circle", "ring"):
        draw.ellipse(box, fill=fill)
        if shape == "ring":
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * RING_INNER, (y1 - y0) / 2 * RING_INNER
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=hole_fill)
    elif shape in SHAPES:
        draw.polygon(shape_polygon(shape, *box), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(shape: str, colour: str, background: str, box: tuple[float, float, float, float], size: int = 64
           ) -> Image.Image:
    """Anti-aliased RGB image of one shape in ``box`` (pixel coordinates at ``size``)."""
    for name, value in (("colour", colour), ("background", background)):
        if value not in PALETTE:
            raise ValueError(f"{name} must be one of {COLOURS}; got {value!r}")
    big = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), PALETTE[background])
    draw_shape(ImageDraw.Draw(big), shape, tuple(v * SUPERSAMPLE for v in box), PALETTE[colour],
               PALETTE[background])
    return big.resize((size, size), Image.BOX)


# sampling

def sample(index: int, split: str = "train", *, seed: int = 0, size: int = 64) -> Sample:
    """Sample ``index`` of ``split``: a deterministic function of (seed, split, index, size)."""
    if index < 0:
        raise ValueError(f"index must be >= 0; got {index}")
    combos = split_combos(split)
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    shape, colour, background = combos[int(rng.integers(len(combos)))]
    side = float(rng.uniform(*SIZE_RANGE)) * size
    margin = size * 0.03
    x0 = float(rng.uniform(margin, size - margin - side))
    y0 = float(rng.uniform(margin, size - margin - side))
    box = (x0, y0, x0 + side, y0 + side)
    return Sample(render(shape, colour, background, box, size), caption(shape, colour, background),
                  shape, colour, background, box)


def samples(cfg: SyntheticConfig, n: int | None = None, *, start: int = 0) -> list[Sample]:
    """``n`` (default ``cfg.count``) consecutive samples of ``cfg.split`` from ``start``."""
    n = cfg.count if n is None else n
    return [sample(i, cfg.split, seed=cfg.seed, size=cfg.size) for i in range(start, start + n)]


def image_array(items: list[Sample]) -> np.ndarray:
    """Stack sample images to a uint8 array (N, H, W, 3)."""
    return np.stack([np.asarray(s.image, dtype=np.uint8) for s in items])


def export_imagefolder(out_dir: str | Path, n: int, split: str = "train", *, seed: int = 0, size: int = 64) -> Path:
    """Write ``n`` PNGs plus ``metadata.jsonl`` (``file_name``, ``text``): the Hugging Face imagefolder format."""
    cfg = SyntheticConfig(seed=seed, size=size, count=n, split=split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w") as f:
        for i, s in enumerate(samples(cfg)):
            name = f"{split}_{i:06d}.png"
            s.image.save(out / name)
            f.write(json.dumps({"file_name": name, "text": s.text, "shape": s.shape, "colour": s.colour,
                                "background": s.background}) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (imagefolder layout)")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args(argv)
    out = export_imagefolder(a.out, a.count, a.split, seed=a.seed, size=a.size)
    print(f"wrote {a.count} {a.split} images to {out}")


if __name__ == "__main__":
    main()
