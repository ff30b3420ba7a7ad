"""Where the studio's data lives, what may be served, and how paths are shown to users (no gradio here).

    persistent_dir()                          # votes: STUDIO_PERSISTENT_DIR, /data/studio on a Space with storage
    blocked_paths()                           # launch(blocked_paths=...): every private folder of the data dir
    deliverable(path)                         # a staged copy to hand to Gradio (never a data-folder path)
    display_path("/srv/studio/outputs/jobs/x/log.txt")  # "<data>/jobs/x/log.txt"
    redact(message)                           # absolute studio roots in a message replaced by their labels

Re-exported by `studio.hosting`, which documents the hosting as a whole.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from studio.paths import ASSETS_DIR, REPO_ROOT, data_dir, model_roots

PERSISTENT_ENV = "STUDIO_PERSISTENT_DIR"
SPACES_DATA = Path("/data")  # a Space's persistent storage, when the Space has it



def persistent_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where data that must outlive a restart goes (the arena's votes): ``STUDIO_PERSISTENT_DIR``, else
    ``/data/studio`` on a Space with persistent storage, else the data dir."""
    env = os.environ if env is None else env
    if env.get(PERSISTENT_ENV):
        path = Path(env[PERSISTENT_ENV]).expanduser().resolve()
    elif env.get("SPACE_ID") and SPACES_DATA.is_dir() and os.access(SPACES_DATA, os.W_OK):
        path = SPACES_DATA / "studio"
    else:
        return data_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def storage_is_persistent(env: Mapping[str, str] | None = None) -> bool:
    """False only on a Space without persistent storage (its disk is wiped at every restart)."""
    env = os.environ if env is None else env
    return not env.get("SPACE_ID") or bool(env.get(PERSISTENT_ENV)) or persistent_dir(env) != data_dir()


# Folders of the data dir that hold nothing a visitor may download directly (votes, battle images, generated
# PNGs, exported weights, job folders, sweep caches, training caches): every tab hands files over as `deliverable`
# copies. Nothing under the data dir is in `allowed_paths` either, so Gradio serves none of it.
PRIVATE_DATA_FOLDERS = ("arena", "generations", "models", "exports", "jobs", "sweeps", "cache")


def blocked_paths() -> list[str]:
    """``launch(blocked_paths=...)``: the private folders of the data dir and the persistent dir."""
    data, store = data_dir(), persistent_dir()
    paths = [data / name for name in PRIVATE_DATA_FOLDERS]
    if store != data:
        paths.append(store)
    return [str(p) for p in paths]


def _staging_root() -> Path:
    return Path(tempfile.gettempdir()) / f"studio-deliver-{os.getuid() if hasattr(os, 'getuid') else 0}"


def deliverable(path: str | os.PathLike, *, max_age_s: float = 3600) -> str:
    """A copy of ``path`` in a staging folder outside every data folder, for a component to hand to Gradio (which
    copies it into its own cache and serves it from there, to the visitor it was returned to). Staged copies older
    than ``max_age_s`` are removed on the way."""
    root = _staging_root()
    root.mkdir(mode=0o700, exist_ok=True)
    now = time.time()
    for old in root.iterdir():
        try:
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:
            pass
    folder = root / secrets.token_hex(8)
    folder.mkdir()
    return str(Path(shutil.copy2(path, folder / Path(path).name)))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE``): downloaded models live there."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser().resolve()


def _labelled_roots() -> list[tuple[str, Path]]:
    roots = [("<data>", data_dir()), ("<persistent>", persistent_dir()), ("", REPO_ROOT.resolve()),
             ("<hf cache>", hub_cache_dir())]
    extra = [r for r in model_roots() if r not in (ASSETS_DIR.resolve(),) and not r.is_relative_to(data_dir())]
    roots += [(f"<model root {i + 1}>", r) for i, r in enumerate(extra)]
    return sorted(roots, key=lambda lr: len(str(lr[1])), reverse=True)  # most specific first


def display_path(path: str | os.PathLike) -> str:
    """``path`` as users see it: relative to the studio's roots (``assets/demo/teacher``, ``<data>/jobs/x``,
    ``<model root 1>/sdxl``), never an absolute server path; outside every root only its file name is shown."""
    resolved = Path(os.path.abspath(os.path.expanduser(str(path))))
    for label, root in _labelled_roots():
        if resolved == root or resolved.is_relative_to(root):
            rel = resolved.relative_to(root).as_posix()
            return (f"{label}/{rel}" if rel != "." else label) if label else (rel if rel != "." else ".")
    return f"<outside the studio's folders>/{resolved.name}"


def resolve_display_path(text: str) -> Path:
    """The server path a path shown by `display_path` stands for: ``<data>/jobs/x`` -> ``<data dir>/jobs/x``,
    ``<hf cache>/…``, ``<model root N>/…``, and a relative path under the repository (as the studio shows them).
    Absolute paths stay as they are; nothing is resolved or checked here (callers confine the result)."""
    text = str(text)
    if text.startswith("<") and ">" in text:
        label, _, rest = text.partition(">")
        for name, root in _labelled_roots():
            if name == label + ">":
                return root / rest.lstrip("/")
        return Path(text)  # an unknown label: a relative path that exists nowhere
    path = Path(text).expanduser()
    return path if path.is_absolute() else REPO_ROOT.resolve() / path


def redact(text: str) -> str:
    """``text`` with every absolute studio root (and the home folder) replaced by its label, for error messages."""
    text = str(text)
    for label, root in _labelled_roots():
        text = re.sub(re.escape(str(root)) + r"(/?)", lambda m, label=label: (
            (label + "/" if label else "") if m.group(1) else (label or ".")), text)  # the repository itself: "."
    home = str(Path.home())
    return text.replace(home, "~") if len(home) > 1 else text
