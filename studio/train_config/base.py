"""TrainConfig: how to optimise (shared by every trainer), its validation helpers, and the run-folder layout that the
trainers write and the job runner reads.

    cfg = DistillConfig.load("configs/distill-demo-ssd.toml", {"steps": 10})   # any TrainConfig subclass
    request_stop(cfg.output_dir, at_step=25)                                   # the trainer stops after step 25

This package is studio core: the job runner validates configs with these classes without importing ``training``;
``training`` builds its trainers from them.
"""
from __future__ import annotations

import json
import math
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

MAX_COUNT = 10_000_000  # steps and other counts of one run
MAX_SEED = 2**32 - 1
MAX_TEXT = 2000  # characters of a prompt or other free text in a config
MAX_PATH = 1024  # characters of a path-valued field; each of its names at most NAME_BYTES bytes (the file system's)
NAME_BYTES = 255
MAX_BUCKET = 4096  # pixels of a training bucket's side (SDXL trains at up to 1536)
MAX_SHORTHAND = 4 * MAX_PATH  # characters of a list given as one comma-separated string
MAX_ITEMS = 256  # entries of a list field (teachers, buckets, prompts, module names), unless SIZES says otherwise


@dataclass(frozen=True)
class Bound:
    """The allowed range of a numeric config field: one source for validation (``check``: the ValueError naming the
    field) and the Train tab's form (``describe``: the same range in words). Values are finite; bools are refused."""

    low: float
    high: float
    low_open: bool = False  # True: value > low (else >=)
    high_open: bool = False  # True: value < high (else <=)
    integer: bool = False

    def describe(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.low_open or self.high_open:
            return f"{what} in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}" \
                   f"{')' if self.high_open else ']'}"
        return f"{what} >= {_num(self.low)} and <= {_num(self.high)}"

    def contains(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if value <= self.low if self.low_open else value < self.low:
            return False
        return value < self.high if self.high_open else value <= self.high

    def require(self, owner: str, name: str, value) -> None:
        if not self.contains(value):
            raise ValueError(f"{owner}.{name} must be {self.describe()}; got {_short(value)}")


def require_number(owner: str, name: str, value, kind: str, low: float, high: float) -> None:
    """ValueError unless ``value`` is an ``int`` (kind "int") or a finite number (kind "float") in [low, high]."""
    Bound(low, high, integer=kind == "int").require(owner, name, value)


def counts(high: float = MAX_COUNT, low: float = 0) -> Bound:
    return Bound(low, high, integer=True)


def weights(high: float = 1000.0) -> Bound:
    return Bound(0, high)


FRACTION = Bound(0, 1, high_open=True)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def require_text(owner: str, name: str, value, max_chars: int = MAX_TEXT) -> None:
    if not isinstance(value, str) or len(value) > max_chars or "\0" in value:
        raise ValueError(f"{owner}.{name} must be text of at most {max_chars} characters; got "
                         f"{_short(value)}")


def require_path_text(owner: str, name: str, value) -> None:
    """A path-valued string: at most MAX_PATH characters, each of its names at most NAME_BYTES bytes (longer ones
    make the operating system refuse the path with "File name too long")."""
    require_text(owner, name, value, MAX_PATH)
    if any(len(part.encode("utf-8", "surrogatepass")) > NAME_BYTES for part in value.replace("\\", "/").split("/")):
        raise ValueError(f"{owner}.{name}: each folder or file name in a path is at most {NAME_BYTES} bytes; got "
                         f"{_short(value)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}… ({len(text)} characters)"


def check_fields(cfg) -> None:
    """The checks every field of a config gets from its annotation: ``int`` and ``float`` fields are numbers within
    ``BOUNDS`` (finite, bools refused), ``bool`` fields are booleans, ``str`` fields are text of at most MAX_TEXT
    characters (path-valued ones, ``PATH_FIELDS``, at most MAX_PATH with names of at most NAME_BYTES bytes), ``list``
    and ``dict`` fields hold at most ``SIZES.get(name, MAX_ITEMS)`` entries (``SHORTHAND`` fields may be a string)."""
    owner, bounds = type(cfg).__name__, type(cfg).class_table("BOUNDS")
    for f in fields(cfg):
        value, kind = getattr(cfg, f.name), str(f.type)
        if kind in ("int", "float"):
            bounds[f.name].require(owner, f.name, value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{owner}.{f.name} must be true or false; got {_short(value)}")
        elif kind == "str":
            (require_path_text if f.name in type(cfg).PATH_FIELDS else require_text)(owner, f.name, value)
        elif kind in ("list", "dict"):
            if isinstance(value, str) and f.name in type(cfg).SHORTHAND:
                require_text(owner, f.name, value, MAX_SHORTHAND)
                continue
            if not isinstance(value, list if kind == "list" else dict) and not (kind == "list" and
                                                                                 isinstance(value, tuple)):
                raise ValueError(f"{owner}.{f.name} must be a {'list' if kind == 'list' else 'table'}; got "
                                 f"{_short(value)}")
            most = type(cfg).SIZES.get(f.name, MAX_ITEMS)
            if len(value) > most:
                raise ValueError(f"{owner}.{f.name} takes at most {most} entries; got {len(value)}")


def check_text_list(cfg, name: str, max_chars: int = MAX_TEXT, *, allow_empty: bool = False) -> None:
    """Every entry of list field ``name`` is text of at most ``max_chars`` characters."""
    for item in getattr(cfg, name):
        if not isinstance(item, str) or len(item) > max_chars or (not allow_empty and not item.strip()):
            raise ValueError(f"{type(cfg).__name__}.{name}: each entry is {'' if allow_empty else 'non-empty '}text "
                             f"of at most {max_chars} characters; got {_short(item)}")


def check_buckets(cfg) -> None:
    """``cfg.buckets``: (width, height) pairs, multiples of 8 from 8 to MAX_BUCKET; normalised to lists."""
    if not cfg.buckets or any(not isinstance(b, (list, tuple)) or len(b) != 2 or any(
            not Bound(8, MAX_BUCKET, integer=True).contains(v) or v % 8 for v in b) for b in cfg.buckets):
        raise ValueError(f"{type(cfg).__name__}.buckets: each bucket is [width, height], multiples of 8 from 8 to "
                         f"{MAX_BUCKET}; got {_short(cfg.buckets)}")
    cfg.buckets = [list(b) for b in cfg.buckets]


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


def check_dataset(cfg, allowed: str) -> None:
    """``cfg.dataset`` given as a local imagefolder must exist with ``metadata.jsonl``; the message says how to make
    one (``allowed`` names the other accepted forms)."""
    folder = Path(cfg.dataset)
    if not (folder / "metadata.jsonl").exists():
        what = "does not exist" if not folder.exists() else "has no metadata.jsonl"  # path length checked before
        raise ValueError(f"{type(cfg).__name__}.dataset: {cfg.dataset!r} {what}. Put your images there with a "
                         f"metadata.jsonl (one {{\"file_name\": ..., \"{cfg.caption_column}\": ...}} per line), "
                         f"or use {allowed}")


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
    """How to optimise (shared by every trainer); subclasses add what to train.

    Every field is checked by ``check_fields`` from its annotation before the field-specific checks: the number
    fields within ``BOUNDS`` (a subclass extends it), string and list fields length-limited. ``PATH_FIELDS`` names the
    path-valued fields and what they are (``studio.jobs.kinds.confine_config`` keeps them inside the allowed folders
    for remote callers before anything else looks at them)."""

    # Bounds and choices by field name (a subclass adds its own; ``class_table`` merges them): one source for
    # validation and the Train tab's form. FORM: the common fields the form shows, in order.
    BOUNDS: ClassVar[dict[str, Bound]] = {
        "steps": counts(low=1), "lr": Bound(0, 1, low_open=True), "lr_warmup_steps": counts(),
        "batch_size": counts(4096, 1), "grad_accum": counts(4096, 1), "weight_decay": Bound(0, 10),
        "max_grad_norm": Bound(0, 1e6), "ema_decay": FRACTION, "checkpoint_every": counts(),
        "keep_checkpoints": counts(10_000), "validate_every": counts(), "seed": counts(MAX_SEED),
        "max_minutes": Bound(0, 1e6)}
    CHOICES: ClassVar[dict[str, tuple]] = {"lr_scheduler": LR_SCHEDULERS, "mixed_precision": MIXED_PRECISION}
    FORM: ClassVar[tuple[str, ...]] = ("steps", "lr", "batch_size", "checkpoint_every", "validate_every",
                                       "max_minutes", "lr_scheduler", "mixed_precision", "seed")

    @classmethod
    def class_table(cls, attr: str) -> dict:
        """``BOUNDS``, ``CHOICES`` (or another table) of this class and its bases merged (a subclass entry wins)."""
        merged = {}
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get(attr, {}))
        return merged
    PATH_FIELDS: ClassVar[dict[str, str]] = {"output_dir": "write"}  # field -> "read" | "write" | "model" | ...
    SIZES: ClassVar[dict[str, int]] = {}  # list / dict field -> most entries (default MAX_ITEMS)
    SHORTHAND: ClassVar[frozenset[str]] = frozenset()  # list fields that may be given as one comma-separated string

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

    def __post_init__(self):
        name = type(self).__name__
        check_fields(self)
        for field_name, allowed in self.class_table("CHOICES").items():
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"{name}.{field_name} must be one of {allowed}; got {_short(getattr(self, field_name))}")
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
