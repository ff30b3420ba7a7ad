"""Widgets map to config fields by name: the one helper every tab uses to wire a handler's inputs.

    inputs = [widgets[name] for name in handler_fields(handlers.on_compare, AblationConfig)]
"""
from __future__ import annotations

import dataclasses
import inspect
import math


def handler_fields(fn, config_cls) -> list[str]:
    """The parameters of handler ``fn`` that are fields of dataclass ``config_cls``, in the signature's order (a
    handler names its inputs after the config fields they fill; other parameters are wired separately)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return [p for p in inspect.signature(fn).parameters if p in names]


def whole(name: str, value) -> int:
    """A widget number that must be a whole number (gr.Number / gr.Slider send floats; the API anything: a bool,
    NaN, 1e300 or text gets a clear error naming the field, never an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            value != int(value):
        raise ValueError(f"{name} must be a whole number; got {str(value)[:40]!r}")
    return int(value)
