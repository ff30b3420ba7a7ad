"""The Train tab's form for a config class, read from the class itself: labels are field names, help is the field's
comment in the dataclass source, ranges and choices are the bounds ``__post_init__`` checks (``BOUNDS``,
``CHOICES``). Form values and a config dict map to each other by field name.

    fields = form_fields(DistillConfig)                  # FormField(name, kind, help, minimum, maximum, choices, ...)
    values = form_values(DistillConfig, config)          # {field name: value as the form shows it}
    config = apply_form(DistillConfig, config, {"steps": 300, "teachers": "assets/demo/teacher"})
"""
from __future__ import annotations

import functools
import inspect
import io
import tokenize
from dataclasses import MISSING, dataclass, fields

from studio.train_config.base import TrainConfig


@dataclass(frozen=True)
class FormField:
    name: str  # the config field (also the widget's label)
    kind: str  # "int" | "float" | "bool" | "choice" | "text"
    help: str  # the field's comment, its range or choices, its default
    default: object
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()
    custom: bool = False  # choices are suggestions: other values allowed


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """``{field: its trailing comment}`` from the source of ``cls`` and its dataclass bases."""
    out = {}
    for klass in reversed(cls.__mro__):
        if "__dataclass_fields__" not in klass.__dict__:
            continue
        source = inspect.getsource(klass)
        pending = None  # a field name at the start of the current line
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and pending is None:
                pending = (tok.string, tok.start[0])
            elif tok.type == tokenize.COMMENT and pending and tok.start[0] == pending[1]:
                out[pending[0]] = tok.string.lstrip("# ").strip()
            elif tok.type == tokenize.NEWLINE:
                pending = None
    return out


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def form_fields(cls: type[TrainConfig], names: tuple[str, ...] | None = None) -> list[FormField]:
    """The form of ``cls`` (``names`` default: its own ``FORM`` then TrainConfig's), one FormField per name."""
    names = names if names is not None else tuple(cls.__dict__.get("FORM", ())) + TrainConfig.FORM
    by_name = {f.name: f for f in fields(cls)}
    bounds, choices = cls.class_table("BOUNDS"), cls.class_table("CHOICES")
    suggestions, codecs = cls.class_table("SUGGESTIONS"), cls.class_table("TEXT_CODECS")
    comments = field_comments(cls)
    out = []
    for name in names:
        f = by_name[name]
        default = _default(f)
        bound = bounds.get(name)
        if name in codecs:
            default = codecs[name][0](default)
        kind = ("choice" if name in choices or name in suggestions else "bool" if f.type in ("bool", bool) else
                "int" if f.type in ("int", int) else "float" if f.type in ("float", float) else "text")
        notes = [comments.get(name, "")]
        if bound is not None:
            notes.append(bound.describe())
        notes.append(f"default {default!r}" if default not in ("", None) else "")
        out.append(FormField(name, kind, "; ".join(n for n in notes if n), default,
                             minimum=None if bound is None else bound.low + (bound.integer and bound.low_open), maximum=bound.high if bound else None,
                             choices=tuple(choices.get(name, suggestions.get(name, ()))),
                             custom=name not in choices))
    return out


def form_values(cls: type[TrainConfig], config: dict, names: tuple[str, ...] | None = None) -> dict:
    """``{name: value}`` of the form fields, from ``config`` (its default where the config leaves a field out)."""
    codecs = cls.class_table("TEXT_CODECS")
    out = {}
    for f in form_fields(cls, names):
        value = config.get(f.name, f.default)
        out[f.name] = codecs[f.name][0](value) if f.name in codecs and f.name in config else value
    return out


def apply_form(cls: type[TrainConfig], config: dict, values: dict) -> dict:
    """``config`` with the form's ``values`` written by field name (numbers typed as the field is; None = leave
    the field as it is; a field the config leaves out stays out while the form shows its default). Not validated:
    the config class does that, naming the field."""
    kinds = {f.name: f.kind for f in form_fields(cls, tuple(values))}
    defaults = {f.name: _default(f) for f in fields(cls)}
    codecs = cls.class_table("TEXT_CODECS")
    out = dict(config)
    for name, value in values.items():
        if value is None:
            continue
        if name in codecs:
            value = codecs[name][1](str(value))
        elif kinds[name] == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif kinds[name] == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if name in out or value != defaults[name]:
            out[name] = value
    return out
