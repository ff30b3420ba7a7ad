"""What the runner knows about a job kind without importing ``training``: its config class (validation), the command
that runs it, what a finished run exports, and which local paths a remote caller may name.

    frozen = validate_config("distill", {"steps": 300})      # the dataclass's ValueError names a bad field
    frozen = prepare_config("distill", config, output_dir="jobs/x/train", policy=PathPolicy.default())  # remote callers
    command_line("lora", "jobs/x/config.json", resume=True)   # [python, -m, training.lora, --config, ..., --resume ...]
"""
from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from studio.names import safe_name
from studio.paths import REPO_ROOT, data_dir, model_roots
from studio.train_config import CONFIG_CLASSES, cli_module, config_class
from studio.train_config.base import require_path_text
from studio.train_config.lora import CONFIG_NAME, LORA_WEIGHT_NAME

KINDS = tuple(CONFIG_CLASSES)
HUB_DATASET = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # "name" or "owner/name"


@dataclass(frozen=True)
class PathPolicy:
    """Where the config of a remote (UI/API) caller may point: ``read`` folders (models, data sets, LoRAs),
    ``write`` folders (caches); hub data sets (``hf:<id>``) only from ``hf_datasets`` unless that is None (any)."""

    read: tuple[Path, ...]
    write: tuple[Path, ...]
    hf_datasets: frozenset[str] | None = None

    @classmethod
    def default(cls, hf_datasets: frozenset[str] | None = None) -> PathPolicy:
        """Read: the model roots, the data folder, the repository's ``models/`` and ``data/`` (where the GPU presets
        expect a downloaded teacher and an image folder) and the Hugging Face hub cache; write: the data folder and
        the repository's ``outputs/`` (the presets' cache location)."""
        from studio.hosting import hub_cache_dir

        read = [*model_roots(), data_dir(), REPO_ROOT / "models", REPO_ROOT / "data", hub_cache_dir()]
        write = [data_dir(), REPO_ROOT / "outputs"]
        return cls(tuple(dict.fromkeys(p.resolve() for p in read)), tuple(dict.fromkeys(p.resolve() for p in write)),
                   hf_datasets)


def confine_config(kind: str, config: dict, policy: PathPolicy) -> dict:
    """``config`` with every path-valued field (the config class's ``PATH_FIELDS``; teachers given as a list or as
    the ``"path@weight,..."`` shorthand) resolved, symlinks and ``..`` included, and refused unless it lies inside
    the policy's folders — before anything looks at it, so the answer never depends on whether an outside path
    exists. Paths are read as the studio shows them (``studio.hosting.resolve_display_path``: ``<data>/…``,
    ``<hf cache>/…``, relative = under the repository). Registry names, recipes, ``demo`` data and allowed hub data
    sets pass unchanged; ``output_dir`` is the runner's. The returned paths are absolute (the job reads exactly what
    was checked)."""
    cls = config_class(kind)
    out = dict(config)
    for name, what in cls.PATH_FIELDS.items():
        value = out[name] if name in out else _default(cls, name)
        if name == "output_dir" or value is None or value == "":
            continue
        if what == "teachers":
            out[name] = [{"path": _inside(cls, name, t["path"], policy.read, "read from"), "weight": t["weight"]}
                         for t in cls.parse_teachers(value)]
            continue
        require_path_text(cls.__name__, name, value)
        if what == "write":
            out[name] = _inside(cls, name, value, policy.write, "write to")
        elif what == "dataset":
            out[name] = _dataset(cls, name, value, policy)
        elif not _named(what, value):  # "read", or a model / recipe that is not a name
            out[name] = _inside(cls, name, value, policy.read, "read from")
    return out


def _default(cls, name: str):
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _named(what: str, value: str) -> bool:
    """A registry model (``what`` "model") or a removal recipe ("recipe-or-folder") named, not a path."""
    if what == "model":
        from studio.registry import list_models

        return value in {s.name for s in list_models()}
    if what == "recipe-or-folder":
        from studio.recipes import RECIPES

        return value in RECIPES
    return False


def _dataset(cls, name: str, value: str, policy: PathPolicy) -> str:
    if value == "demo" or value.startswith("demo:"):
        return value
    if not value.startswith("hf:"):
        return _inside(cls, name, value, policy.read, "read from")
    ident = value[3:]
    if policy.hf_datasets is not None and ident not in policy.hf_datasets:
        allowed = ", ".join(sorted(policy.hf_datasets)) or "none"
        raise ValueError(f"{cls.__name__}.{name}: hub data set {ident[:100]!r} is not one this studio allows "
                         f"(STUDIO_HF_DATASETS: {allowed})")
    if HUB_DATASET.match(ident) and ".." not in ident and not (Path.cwd() / ident).exists():
        return value  # a hub data set id (the trainer would read a local folder of that name instead)
    return "hf:" + _inside(cls, name, ident, policy.read, "read from")


def _inside(cls, name: str, value, roots, verb: str) -> str:
    from studio.hosting import display_path, resolve_display_path

    if not isinstance(value, str):
        raise ValueError(f"{cls.__name__}.{name} must be text; got {type(value).__name__}")
    try:
        resolved = resolve_display_path(value).resolve()
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{cls.__name__}.{name}: {value[:200]!r} cannot be resolved ({type(err).__name__})") from None
    if any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return str(resolved)
    allowed = ", ".join(display_path(r) for r in roots)
    raise ValueError(f"{cls.__name__}.{name}: {value[:200]!r} is outside the folders a job may {verb} ({allowed})")


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


def prepare_config(kind: str, config: dict, *, output_dir: str | Path, policy: PathPolicy | None = None) -> dict:
    """What a job of ``kind`` will run with: ``config`` confined to ``policy``'s folders (remote callers; None: the
    local command line), ``output_dir`` set, a distillation's ``base_name`` taken from its first teacher when the
    registry lists it, validated by the config class. The Train tab's check and the runner's submit both call this,
    so a config that checks also submits."""
    if not isinstance(config, dict):
        raise ValueError(f"a job config is a JSON object of config fields; got {type(config).__name__}")
    config = confine_config(kind, config, policy) if policy is not None else dict(config)
    config["output_dir"] = str(output_dir)
    if kind == "distill" and not config.get("base_name"):
        config["base_name"] = registry_name_of(config.get("teachers"))
    return validate_config(kind, config)


def model_name(text: str) -> str:
    """A registry-safe name (lower-case letters, digits, '.', '_', '-'; at most 64 characters)."""
    name = safe_name(text)
    if not name:
        raise ValueError(f"name {text!r} has no usable characters (use letters, digits, '.', '_' or '-')")
    return name


def registry_name_of(teachers) -> str:
    """Registry name of the first teacher folder when the registry lists it (so the student names its base)."""
    from studio.registry import list_models

    from studio.train_config import DistillConfig

    try:
        path = DistillConfig.parse_teachers(teachers)[0]["path"]
    except ValueError:
        return ""  # validation says what is wrong
    if not Path(path).exists():
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
