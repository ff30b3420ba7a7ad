"""The arena's prompts and battle cache: curated prompt sets (with categories) and the pre-generated battles a CPU
Space serves instantly; every image is rebuilt from raw pixels (no text chunk survives) and saved under a random
name, so neither payload nor file name identifies its model.
"""
from __future__ import annotations

import json
import os
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

GenerateFn = Callable[[str, str, int, dict], Image.Image]  # (model_name, prompt, seed, settings) -> image
DEFAULT_PROMPT_SET = Path(__file__).resolve().parent.parent / "assets" / "prompts" / "arena.json"
CACHE_INDEX = "index.json"


class ArenaError(ValueError):
    """A request the arena refuses; the message is safe to show to voters (it never names a hidden model)."""


class UnknownBattleError(ArenaError):
    pass


class AlreadyVotedError(ArenaError):
    pass


class RateLimitError(ArenaError):
    pass


class TooSoonError(ArenaError):
    """A vote cast before the voter had `ArenaConfig.min_view_seconds` to look at the battle."""



# ---------------------------------------------------------------------------------------------------------------
# prompt sets


@dataclass(frozen=True)
class PromptItem:
    category: str
    text: str


def load_prompt_set(path: str | Path = DEFAULT_PROMPT_SET) -> list[PromptItem]:
    """Prompts of a JSON file ``{"categories": {"<category>": ["prompt", ...], ...}}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    items = [PromptItem(c, p) for c, prompts in data["categories"].items() for p in prompts]
    if not items:
        raise ValueError(f"prompt set {path} has no prompts")
    return items


def draw_prompt(items: Sequence[PromptItem], *, category: str | None = None,
                rng: random.Random | None = None) -> PromptItem:
    """A uniformly drawn prompt, optionally from one category."""
    pool = [i for i in items if category is None or i.category == category]
    if not pool:
        raise ArenaError(f"category must be one of {', '.join(sorted({i.category for i in items}))}; "
                         f"got {category!r}")
    return (rng or random).choice(pool)


# ---------------------------------------------------------------------------------------------------------------
# images


def strip_image(image: Image.Image) -> Image.Image:
    """A copy rebuilt from raw pixels: no ``info`` (PNG text, EXIF, ICC) can carry a model name through."""
    image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    return Image.frombytes(image.mode, image.size, image.tobytes())


def save_anonymous(image: Image.Image, folder: Path) -> tuple[Image.Image, Path]:
    clean = strip_image(image)
    path = folder / f"{secrets.token_urlsafe(12)}.png"  # random name: no model, side or order in it
    clean.save(path, format="PNG")
    return clean, path


# ---------------------------------------------------------------------------------------------------------------
# battle cache


def build_cache(pool: Sequence[str], prompts: Sequence[str | PromptItem], seeds: Sequence[int],
                generate_fn: GenerateFn, cache_dir: str | Path, *, settings: dict | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Pre-generate one image per (prompt, seed, model) and write ``cache_dir/index.json``; returns the index path.

    Resumable: images already in an existing index are kept. All entries share `settings` (a mismatch with an
    existing index raises). `on_progress(done, total)` is called after each image.
    """
    cache_dir, settings = Path(cache_dir), dict(settings or {})
    cache_dir.mkdir(parents=True, exist_ok=True)
    index_path = cache_dir / CACHE_INDEX
    index = (json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists()
             else {"version": 1, "settings": settings, "entries": []})
    if index["settings"] != settings:
        raise ValueError(f"build_cache: settings {settings} differ from the cache's {index['settings']}; "
                         "use another cache_dir")
    entries = {(e["prompt"], e["seed"]): e for e in index["entries"]}
    items = [p if isinstance(p, PromptItem) else PromptItem("custom", p) for p in prompts]
    total, done = len(items) * len(seeds) * len(pool), 0
    for item in items:
        for seed in seeds:
            entry = entries.setdefault((item.text, int(seed)), {"prompt": item.text, "category": item.category,
                                                                 "seed": int(seed), "images": {}})
            for model in pool:
                if model not in entry["images"]:
                    _, path = save_anonymous(generate_fn(model, item.text, int(seed), dict(settings)), cache_dir)
                    entry["images"][model] = path.name
                done += 1
                if on_progress:
                    on_progress(done, total)
            index["entries"] = list(entries.values())
            tmp = index_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
            os.replace(tmp, index_path)  # atomic: a crash never leaves a half-written index
    return index_path
