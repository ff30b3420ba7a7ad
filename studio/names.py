"""One rule for names that become registry keys, folder names and file names.

    safe_name("My SSD-1B unet!")  ->  "my-ssd-1b-unet"
"""
from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def safe_name(text: str, *, max_len: int = 64) -> str:
    """Lower-case letters, digits, '.', '_' and '-' only (runs of anything else become one '-'), no leading or
    trailing separators, at most ``max_len`` characters; '' when nothing usable is left."""
    return _UNSAFE.sub("-", str(text).strip().lower()).strip("-._")[:max_len].rstrip("-._")
