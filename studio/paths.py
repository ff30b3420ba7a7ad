"""Where the studio reads and writes, and the guard that keeps user-supplied paths inside those places.

Environment variables (all optional):
    STUDIO_DATA_DIR     outputs, exported models, votes, jobs (default: <repo>/outputs)
    STUDIO_MODEL_ROOTS  extra folders, separated by ':', from which the UI may load models by path
    STUDIO_ALLOW_PICKLE set to 1 to let a *local* user load .bin/.ckpt weights (never on a public host)
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
DEMO_DIR = ASSETS_DIR / "demo"


def data_dir() -> Path:
    path = Path(os.environ.get("STUDIO_DATA_DIR", REPO_ROOT / "outputs")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Folder where exported students, fine-tunes and LoRAs land; scanned by the registry."""
    path = data_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_roots() -> list[Path]:
    """Folders a remote (UI/API) user may load models from."""
    extra = [Path(p).resolve() for p in os.environ.get("STUDIO_MODEL_ROOTS", "").split(":") if p]
    return [ASSETS_DIR.resolve(), models_dir()] + extra


def allow_pickle() -> bool:
    return os.environ.get("STUDIO_ALLOW_PICKLE", "") == "1"


def resolve_inside(path: str | os.PathLike, roots: list[Path]) -> Path:
    """Resolve ``path`` (following symlinks) and refuse it unless it lies inside one of ``roots``."""
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise ValueError(f"path {str(path)!r} is outside the allowed folders ({allowed}); "
                     "put the model there or add its folder to STUDIO_MODEL_ROOTS")
