"""What the runner knows about a job kind without importing ``training``: its config class (validation), the command
that runs it, what a finished run exports, and which local paths a remote caller may name.

    frozen = validate_config("distill", {"steps": 300})      # the dataclass's ValueError names a bad field
    command_line("lora", "jobs/x/config.json", resume=True)   # [python, -m, training.lora, --config, ..., --resume ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

from studio.names import safe_name
from studio.paths import resolve_inside
from studio.train_config import CONFIG_CLASSES, cli_module, config_class
from studio.train_config.lora import CONFIG_NAME, LORA_WEIGHT_NAME

KINDS = tuple(CONFIG_CLASSES)


def validate_config(kind: str, config: dict) -> dict:
    """The config as the job kind's dataclass normalises it; its ValueError when a field is wrong."""
    if not isinstance(config, dict):
        raise ValueError(f"a job config is a JSON object of config fields; got {type(config).__name__}")
    return config_class(kind).from_dict(dict(config)).to_dict()


def final_output(kind: str, train_dir: str | Path) -> list[Path]:
    """What a finished run exported: a LoRA file + its config (``training.lora`` and a ``training.fewstep`` LCM-LoRA
    write them at the top of their output_dir), or else a ``final/`` folder (a distilled or few-step student); []
    when absent."""
    train_dir = Path(train_dir)
    weights = train_dir / LORA_WEIGHT_NAME
    if kind == "lora" or (kind == "fewstep" and weights.exists()):
        configs = (train_dir / CONFIG_NAME, train_dir / "fewstep_config.json")
        return [p for p in (weights, *configs) if p.exists()] if weights.exists() else []
    return [train_dir / "final"] if (train_dir / "final").is_dir() else []


def command_line(kind: str, config_path: str | Path, *, resume: bool = False) -> list[str]:
    """The CLI a job runs (and a user can copy)."""
    return [sys.executable, "-m", cli_module(kind), "--config", str(config_path)] + (
        ["--resume", "latest"] if resume else [])


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def check_config_paths(config: dict, roots: list[Path]) -> None:
    """Refuse a config naming a local file or folder outside ``roots`` (hub ids and recipe names pass)."""
    for text in _strings(config):
        if text.startswith(("/", ".", "~")) or (text and Path(text).exists()):
            resolve_inside(text, roots)


def model_name(text: str) -> str:
    """A registry-safe name (lower-case letters, digits, '.', '_', '-'; at most 64 characters)."""
    name = safe_name(text)
    if not name:
        raise ValueError(f"name {text!r} has no usable characters (use letters, digits, '.', '_' or '-')")
    return name


def registry_name_of(teachers) -> str:
    """Registry name of the first teacher folder when the registry lists it (so the student names its base)."""
    from studio.registry import list_models

    if not teachers:
        return ""
    first = teachers[0] if not isinstance(teachers, str) else teachers.split(",")[0].split("@")[0]
    path = first.get("path") if isinstance(first, dict) else first
    if not path or not Path(path).exists():
        return ""
    target = Path(path).resolve()
    for spec in list_models():
        if spec.source_kind == "folder" and Path(spec.source).resolve() == target:
            return spec.name
    return ""


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def _download_hint(path: str, config: dict) -> str:
    """How to get a teacher folder: the hub download of the config's ``base_name`` when the registry knows it."""
    from studio.registry import get_spec

    try:
        spec = get_spec(config.get("base_name", ""))
    except ValueError:
        spec = None
    if spec is not None and spec.source_kind == "hub":
        return f"download it with `huggingface-cli download {spec.source} --local-dir {path}`, or point teachers " \
               f"at your local copy"
    return "point teachers at a local diffusers pipeline folder"


def missing_for(kind: str, config: dict, *, cuda: bool | None = None) -> list[str]:
    """Everything a config needs that this machine lacks, each with how to get it (unlike validation, which stops at
    the first problem): teacher / base model folders or downloads, the data set, a CUDA GPU for mixed precision.
    ``cuda`` defaults to ``torch.cuda.is_available()``. [] when nothing is missing."""
    from studio.registry import get_spec, is_available_offline
    from studio.train_config.distill import parse_teachers

    out = []
    if kind == "distill":
        teachers = config.get("teachers") or []
        for t in parse_teachers(teachers) if isinstance(teachers, str) else teachers:
            path = t["path"] if isinstance(t, dict) else str(t)
            if not (Path(path) / "model_index.json").exists():
                out.append(f"teacher `{path}` is not on this machine: {_download_hint(path, config)}")
    elif kind == "lora":
        base = str(config.get("base_model", ""))
        try:
            spec = get_spec(base)
        except ValueError:
            spec = None
        if spec is not None and not is_available_offline(spec):
            out.append(f"base model `{base}` is not downloaded: `huggingface-cli download {spec.source}` first (the "
                       f"job would download it at start, which needs the hub), or set base_model to a local folder")
    dataset = str(config.get("dataset", "demo" if kind == "distill" else ""))
    if dataset and dataset != "demo" and not dataset.startswith(("hf:", "demo:")) and \
            not (Path(dataset) / "metadata.jsonl").exists():
        column = config.get("caption_column", "text")
        out.append(f"data set folder `{dataset}` is missing: put the images there with a metadata.jsonl (one "
                   f"{{\"file_name\": ..., \"{column}\": ...}} per line), or use `hf:<dataset name>`")
    precision = config.get("mixed_precision", "no")
    if precision != "no" and not (_has_cuda() if cuda is None else cuda):
        out.append(f"this machine has no CUDA GPU, and mixed_precision `{precision}` needs one: run this preset on a "
                   f"GPU machine (`accelerate launch -m {cli_module(kind)} --config <file>`), or set mixed_precision "
                   f"to `no` (a CPU run at full resolution would take days)")
    return out
