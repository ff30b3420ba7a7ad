"""TrainConfig: how to optimise (shared by every trainer), its validation helpers, and the run-folder layout that the
trainers write and the job runner reads.

    cfg = DistillConfig.load("configs/distill-demo-ssd.toml", {"steps": 10})   # any TrainConfig subclass
    request_stop(cfg.output_dir, at_step=25)                                   # the trainer stops after step 25

This package is studio core: the job runner validates configs with these classes without importing ``training``;
``training`` builds its trainers from them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
SAVE_DTYPES = ("fp32", "fp16", "bf16")  # dtypes an exported model or LoRA file may be written in

# ---------------------------------------------------------------- run folder layout (trainer writes, runner reads)

STATE_FILE = "trainer_state.json"  # inside checkpoint-<step>/, written last: its presence marks a complete checkpoint
STOP_FILE = "STOP"  # <output_dir>/STOP: empty = stop before the next step; "N" = stop once step N is done
LOG_FILE = "log.csv"  # one row per optimizer step


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """``checkpoint-<step>`` folders with a complete ``trainer_state.json``, oldest first."""
    root = Path(output_dir)
    found = [p for p in root.glob("checkpoint-*") if (p / STATE_FILE).exists() and p.name[11:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[11:]))


def request_stop(output_dir: str | Path, *, at_step: int | None = None) -> Path:
    """Ask a run to stop gracefully (checkpoint, then exit 0): before its next step, or once step ``at_step`` is
    done (a run already past it stops before its next step)."""
    path = Path(output_dir) / STOP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("" if at_step is None else f"{int(at_step)}\n")
    return path


def stop_requested(output_dir: str | Path, step: int) -> bool:
    """Whether ``request_stop`` asked the run to stop now that ``step`` steps are done."""
    path = Path(output_dir) / STOP_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return False
    return not text.isdigit() or step >= int(text)


def read_config_file(path: str | Path) -> dict:
    """Fields from a TOML (stdlib tomllib) or JSON config file; a saved config.json / trainer_state.json wraps them
    in ``config``."""
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(path.read_text())
    else:
        data = json.loads(path.read_text())
    return data.get("config", data)


# ---------------------------------------------------------------- validation helpers

@dataclass(frozen=True)
class Bound:
    """The allowed range of a numeric config field; ``check`` raises the ValueError naming the field, ``describe``
    is the same range in words (the Train tab's form shows it)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value > low (else >=)
    high_open: bool = False  # True: value < high (else <=)
    integer: bool = False

    def describe(self) -> str:
        what = "an integer " if self.integer else ""
        if self.high is None:
            return f"{what}{'>' if self.low_open else '>='} {self.low:g}"
        return f"{what}in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def contains(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, cfg, name: str) -> None:
        value = getattr(cfg, name)
        if not self.contains(value):
            raise ValueError(f"{type(cfg).__name__}.{name} must be {self.describe()}; got {value!r}")


NON_NEGATIVE, FRACTION = Bound(0), Bound(0, 1, high_open=True)
COUNT, POSITIVE_COUNT = Bound(0, integer=True), Bound(1, integer=True)


def check_buckets(cfg) -> None:
    """``cfg.buckets``: (width, height) pairs, positive multiples of 8; normalised to lists."""
    if not cfg.buckets or any(len(b) != 2 or any(not isinstance(v, int) or v < 8 or v % 8 for v in b)
                              for b in cfg.buckets):
        raise ValueError(f"{type(cfg).__name__}.buckets: each bucket is [width, height], positive multiples of 8; "
                         f"got {cfg.buckets}")
    cfg.buckets = [list(b) for b in cfg.buckets]


def check_dataset(cfg, allowed: str) -> None:
    """``cfg.dataset`` given as a local imagefolder must exist with ``metadata.jsonl``; the message says how to make
    one (``allowed`` names the other accepted forms)."""
    folder = Path(cfg.dataset)
    if not (folder / "metadata.jsonl").exists():
        what = "does not exist" if not folder.exists() else "has no metadata.jsonl"
        raise ValueError(f"{type(cfg).__name__}.dataset: {cfg.dataset!r} {what}. Put your images there with a "
                         f"metadata.jsonl (one {{\"file_name\": ..., \"{cfg.caption_column}\": ...}} per line), "
                         f"or use {allowed}")


def check_model(cfg, field_name: str) -> None:
    """A registry name or a local model folder (``studio.loading.resolve_spec`` decides)."""
    from studio.loading import resolve_spec

    value = getattr(cfg, field_name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{type(cfg).__name__}.{field_name}: give a registry name or a local model folder")
    try:
        resolve_spec(value)
    except ValueError as err:
        raise ValueError(f"{type(cfg).__name__}.{field_name}: {err}") from None


def missing_model_hint(path: str, registry_name: str = "") -> str:
    """What to download for a model folder that is not there (the hub repo of ``registry_name`` when known)."""
    from studio.registry import get_spec

    try:
        spec = get_spec(registry_name) if registry_name else None
    except ValueError:
        spec = None
    if spec is not None and spec.source_kind == "hub":
        return (f"download it first: huggingface-cli download {spec.source} --local-dir {path} "
                f"(or point this field at your local copy)")
    return "point this field at a local diffusers folder"


# ---------------------------------------------------------------- config

@dataclass
class TrainConfig:
    """How to optimise (shared by every trainer); subclasses add what to train."""

    steps: int = 1000  # optimizer steps
    lr: float = 1e-4  # peak AdamW learning rate
    lr_scheduler: str = "constant"  # diffusers get_scheduler name, see LR_SCHEDULERS
    lr_warmup_steps: int = 0
    batch_size: int = 8  # per device and micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # gradient clipping; 0 = off
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (accelerate autocast)
    ema_decay: float = 0.0  # diffusers EMAModel decay; 0 = no EMA
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only the final one
    keep_checkpoints: int = 2  # newest checkpoints kept (older ones deleted); 0 = keep all
    validate_every: int = 0  # steps between validations; 0 = never (except none at the end)
    seed: int = 0  # seeds init, batches, noise and timesteps
    max_minutes: float = 0.0  # wall-clock budget of one run; when hit: checkpoint + export, like the last step
    output_dir: str = "outputs/train"

    # Validation bounds and choices by field name (subclasses add theirs; ``class_table`` merges them): one source
    # for __post_init__ and the Train tab's form. FORM: the common fields the form shows, in order.
    BOUNDS: ClassVar[dict[str, Bound]] = {
        "steps": POSITIVE_COUNT, "batch_size": POSITIVE_COUNT, "grad_accum": POSITIVE_COUNT,
        "lr_warmup_steps": COUNT, "checkpoint_every": COUNT, "keep_checkpoints": COUNT, "validate_every": COUNT,
        "seed": COUNT, "lr": Bound(0, 1, low_open=True), "ema_decay": FRACTION, "weight_decay": NON_NEGATIVE,
        "max_grad_norm": NON_NEGATIVE, "max_minutes": NON_NEGATIVE}
    CHOICES: ClassVar[dict[str, tuple]] = {"lr_scheduler": LR_SCHEDULERS, "mixed_precision": MIXED_PRECISION}
    FORM: ClassVar[tuple[str, ...]] = ("steps", "lr", "batch_size", "checkpoint_every", "validate_every",
                                       "max_minutes", "lr_scheduler", "mixed_precision", "seed")

    @classmethod
    def class_table(cls, attr: str) -> dict:
        """``BOUNDS`` or ``CHOICES`` of this class and its bases merged (a subclass entry wins)."""
        merged = {}
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get(attr, {}))
        return merged

    def __post_init__(self):
        name = type(self).__name__
        for field_name, bound in self.class_table("BOUNDS").items():
            bound.check(self, field_name)
        for field_name, allowed in self.class_table("CHOICES").items():
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"{name}.{field_name} must be one of {allowed}; got {getattr(self, field_name)!r}")
        if not self.output_dir:
            raise ValueError(f"{name}.output_dir must not be empty")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict | None = None):
        """A config from a TOML or JSON file (a saved config.json works too) plus ``overrides`` by field name."""
        data = read_config_file(path) if path is not None else {}
        return cls.from_dict({**data, **(overrides or {})})
