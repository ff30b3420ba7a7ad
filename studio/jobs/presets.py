"""Job presets: the TOML files under ``configs/``, listed by the Train tab. ``<kind>-<name>.toml`` is a config of job
kind ``<kind>`` (``studio.train_config.CONFIG_CLASSES``); its first line, a comment, is the title shown in the UI.

    for p in list_presets(): print(p.name, p.kind, p.title)
    kind, config = preset_config("distill-demo-vega-5min")    # fields, without output_dir (a job writes its own)

Presets for real models name honest placeholders (``models/sdxl-base-1.0``, ``data/lora-images``); validation
refuses them before launch and says what to download or where to point.
"""
from __future__ import annotations

import json
import shlex
import tomllib
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from studio.paths import REPO_ROOT
from studio.train_config import CONFIG_CLASSES, cli_module, config_class

CONFIGS_DIR = REPO_ROOT / "configs"
DEFAULT_PRESET = "distill-demo-vega-5min"  # a demo student in ~5 min on a CPU


@dataclass(frozen=True)
class Preset:
    name: str  # file stem, e.g. "distill-demo-ssd"
    kind: str  # job kind, from the file name
    title: str  # the file's first comment line
    path: Path


def list_presets(folder: Path = CONFIGS_DIR) -> list[Preset]:
    """Every ``<kind>-*.toml`` of a known kind, the default first, then by name."""
    presets = []
    for path in sorted(folder.glob("*.toml")):
        kind = path.stem.split("-", 1)[0]
        if kind not in CONFIG_CLASSES:
            continue
        first = path.read_text().splitlines()[:1]
        title = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else path.stem
        presets.append(Preset(path.stem, kind, title, path))
    return sorted(presets, key=lambda p: (p.name != DEFAULT_PRESET, p.name))


def preset_config(name: str, folder: Path = CONFIGS_DIR) -> tuple[str, dict]:
    """``(kind, config fields)`` of preset ``name``, without ``output_dir``. Not validated here: a placeholder
    path is the validator's to flag. A distillation teacher placeholder becomes the Hugging Face cache's copy of the
    ``base_name`` model when that is already downloaded."""
    found = {p.name: p for p in list_presets(folder)}
    if name not in found:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(found)}")
    preset = found[name]
    config = tomllib.loads(preset.path.read_text())
    config.pop("output_dir", None)
    teachers = config.get("teachers") or [] if preset.kind == "distill" else []
    if teachers and not Path(teachers[0]["path"]).exists():
        teachers[0]["path"] = _cached_snapshot(config.get("base_name", "")) or teachers[0]["path"]
    return preset.kind, config


def _cached_snapshot(model: str) -> str | None:
    """Local folder of a registry model's hub repo already in the Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        from studio.registry import get_spec

        spec = get_spec(model)
        return snapshot_download(spec.source, local_files_only=True) if spec.source_kind == "hub" else None
    except Exception:  # unknown model, not cached, or offline: the preset keeps its placeholder path
        return None


def _arg(value) -> str:
    """A ``--field VALUE`` value as the training CLIs parse it back (JSON when it parses, else the string)."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return shlex.quote(value)
    return shlex.quote(json.dumps(value))


def cli_preview(kind: str, config: dict, preset: str = "", folder: Path = CONFIGS_DIR) -> str:
    """The shell command running ``config`` without the UI, command first: the preset's file plus one
    ``--field VALUE`` line per field that differs from it; with no preset, ``--config job.json`` and the JSON."""
    module = cli_module(kind)
    found = {p.name: p for p in list_presets(folder)}
    if preset not in found or found[preset].kind != kind:
        body = json.dumps(config, indent=1)
        return f"python -m {module} --config job.json\n\n# job.json:\n{body}"
    _, base = preset_config(preset, folder)
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(config_class(kind))}
    changed = {k: v for k, v in config.items() if base.get(k, defaults.get(k)) != v}
    changed |= {k: defaults[k] for k in base if k not in config and k in defaults}
    path = found[preset].path
    path = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    lines = [f"python -m {module} --config {shlex.quote(str(path))}"] + [f"    --{k} {_arg(v)}" for k, v in changed.items()]
    return " \\\n".join(lines)
