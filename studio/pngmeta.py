"""AUTOMATIC1111-style ``parameters`` text in PNG files, so other tools' "PNG Info" reads studio images.

Line 1 is the prompt, line 2 ``Negative prompt: ...``, line 3 ``Steps: 20, Sampler: Euler, CFG scale: 5, ...``.
The full request is also stored as JSON under the ``studio`` key for an exact round trip.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def format_parameters(prompt: str, negative_prompt: str, fields: dict) -> str:
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None and v != ""))
    return "\n".join(lines)


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text) if ("," in text or ":" in text or "\n" in text) else text


def parse_parameters(text: str) -> dict:
    """Inverse of :func:`format_parameters`: {'prompt', 'negative_prompt', and each 'Key': 'value'}."""
    lines = text.split("\n")
    settings_line = lines[-1]
    body = lines[:-1]
    negative = ""
    for i, line in enumerate(body):
        if line.startswith("Negative prompt: "):
            negative = "\n".join(body[i:])[len("Negative prompt: "):]
            body = body[:i]
            break
    out = {"prompt": "\n".join(body), "negative_prompt": negative}
    for key, value in re.findall(r'\s*([\w ]+): ("(?:\\.|[^"\\])*"|[^,]*)(?:,|$)', settings_line):
        out[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return out


def save_png(image: Image.Image, path: str | Path, parameters: str, studio: dict | None = None) -> Path:
    info = PngInfo()
    info.add_text("parameters", parameters)
    if studio is not None:
        info.add_text("studio", json.dumps(studio, sort_keys=True))
    path = Path(path)
    image.save(path, pnginfo=info)
    return path


def read_png(path: str | Path) -> tuple[dict, dict | None]:
    """(parsed A1111 parameters, studio JSON or None) of a PNG written by :func:`save_png`."""
    with Image.open(path) as im:
        text = im.text if hasattr(im, "text") else im.info
        params = parse_parameters(text["parameters"]) if "parameters" in text else {}
        studio = json.loads(text["studio"]) if "studio" in text else None
    return params, studio
