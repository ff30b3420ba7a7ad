"""The public-mode app the public tests probe (fixture ``public`` in conftest.py): the tests' tiny family as the
arena pool at 3 steps, admin password sign-in, caps tightened for tests, decoy files in the data folder."""
from __future__ import annotations

import base64
import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from studio.hosting import Caps, Hosting
from studio.loading import ModelCache
from studio.paths import data_dir
from studio.ui import build_app, launch
from studio.ui.arena_tab import POOL_ENV
from tests.studio.ui import free_port

POOL = ["pub-teacher", "pub-student"]  # the tests' tiny family at 3 steps (a battle in about a second)
PASSWORD = "correct horse battery"
BASIC = {"authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
CAPS = replace(Caps.defaults("public"), min_view_s=0.5, votes_per_minute=2, battles_per_minute=3)
HAS_MCP = importlib.util.find_spec("mcp") is not None


def as_ip(ip: str, *spoofed: str) -> dict:
    """Headers of a visitor at ``ip`` behind the Spaces proxy (which appends the address it saw), having sent its
    own x-forwarded-for entries ``spoofed`` first."""
    return {"x-forwarded-for": ", ".join([*spoofed, ip])}


def decoys() -> list[Path]:
    """What a real server's data folder holds besides votes: job configs, logs, checkpoints, exported weights,
    sweep CSVs, other visitors' PNGs (with prompts in their metadata), exports."""
    files = {"jobs/20260101-000000-distill/config.json": '{"teachers": "assets/demo/teacher"}',
             "jobs/20260101-000000-distill/job.log": "step 1 loss 0.1",
             "jobs/20260101-000000-distill/train/checkpoint-10/unet/diffusion_pytorch_model.safetensors": "w",
             "sweeps/exports/demo-teacher-20260101.csv": "unit,damage", "generations/2026-01-01/00001-tiny.png": "p",
             "exports/arena-votes.csv": "id,voter"}
    out = []
    for rel, text in files.items():
        path = data_dir() / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.append(path)
    return out


def fast_pool(family) -> None:
    """``family``'s models again under `POOL` names, generating at 3 steps (their studio_model.json)."""
    from studio.paths import models_dir

    for name, source in zip(POOL, (family["base"], family["student"])):
        target = models_dir() / name
        if not target.exists():
            shutil.copytree(source, target)
        meta = {"default_steps": 3, "description": "test"}
        if name == POOL[1]:
            meta["base"] = POOL[0]
        (target / "studio_model.json").write_text(json.dumps(meta))


def start_public(family):
    """Yields the running app (url, demo, hosting); closes it after."""
    fast_pool(family)
    mp = pytest.MonkeyPatch()
    mp.setenv(POOL_ENV, ",".join(POOL))
    hosting = Hosting(mode="public", caps=CAPS, on_spaces=True, admin_password=PASSWORD, mcp=HAS_MCP)
    demo = build_app(ModelCache(), hosting=hosting)
    mp.undo()
    decoys()
    _, url, _ = launch(demo, prevent_thread_lock=True, server_port=free_port(), quiet=True)
    yield SimpleNamespace(url=url, demo=demo, hosting=hosting)
    demo.close()
