"""Core limits a public studio relies on (issue 13, items 6 and 7): init images refused from their header before any
decoding, generation requests checked against the hosting's caps before anything resolves or loads, and
``negative_prompt=None`` taken as "no negative prompt" (it gave "NoneType has no len()")."""
from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image

from studio.compare import iter_side_by_side
from studio.generation import GenerateRequest, load_init_image
from studio.hosting import CapError, Caps
from studio.loading import ModelCache

PUBLIC = Caps.defaults("public")


def declared_png(width: int, height: int, *, idat: bytes | None = None) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (8-bit grey) over a few hundred bytes of data: the
    decompression bomb of issue 13 (a 140 KB file that decodes to 12000x12000)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    body = idat if idat is not None else zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.hostile
@pytest.mark.parametrize("width,height", [(12000, 12000), (65535, 65535), (3000, 3000), (2049, 2049),
                                          (1, 50_000_000), (50_000_000, 1)],
                         ids=["12000sq", "65535sq", "3000sq", "2049sq", "1xhuge", "hugex1"])
def test_hostile_init_image_sizes_are_refused_from_the_header(tmp_path, width, height):
    """Refused by its declared size, not after decoding: the data holds a few hundred bytes, so a decode would fail
    with a "damaged" error instead, and the message names the declared size, the cap and its variable."""
    path = tmp_path / "bomb.png"
    path.write_bytes(declared_png(width, height))
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    declared = rf"(\({width}x{height} =\) )?{width * height:,}"  # far above Pillow's own limit: no size
    with pytest.raises(CapError, match=rf"init image pixels {declared} is above this server's cap of 4,194,304 "
                                       r"\(STUDIO_MAX_INIT_PIXELS\)"):
        load_init_image(str(path), PUBLIC)
    assert time.perf_counter() - start < 1.0


def test_pillow_limit_set_by_the_app_gives_the_same_clear_answer(tmp_path, monkeypatch):
    """The app sets Pillow's MAX_IMAGE_PIXELS to the cap; far above it Pillow refuses at open: still a clear message."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PUBLIC.init_pixels)
    path = tmp_path / "bomb.png"
    path.write_bytes(declared_png(12000, 12000))
    with pytest.raises(CapError, match=r"init image pixels 144,000,000 is above this server's cap of 4,194,304 "
                                       r"\(STUDIO_MAX_INIT_PIXELS\)"):
        load_init_image(str(path), PUBLIC)


@pytest.mark.hostile
@pytest.mark.parametrize("content,match", [
    (b"not an image at all", "not a readable image"),
    (b"", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a readable image"),
    (declared_png(64, 64, idat=b"\x78\x9c garbage"), "damaged"),
    (b"<svg xmlns='http://www.w3.org/2000/svg' width='99999' height='99999'/>", "not a readable image"),
], ids=["text", "empty", "png-magic-only", "corrupt-idat", "svg"])
def test_hostile_init_image_files_get_a_clear_error(tmp_path, content, match):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"init image: .*{match}"):
        load_init_image(str(path), PUBLIC)


def test_a_normal_init_image_loads_as_rgb(tmp_path):
    for mode in ("RGB", "RGBA", "P", "L"):
        path = tmp_path / f"ok-{mode}.png"
        path.write_bytes(png_bytes(Image.new(mode, (64, 48))))
        image = load_init_image(str(path), PUBLIC)
        assert image.mode == "RGB" and image.size == (64, 48)
    assert load_init_image(Image.new("RGBA", (8, 8))).mode == "RGB"
    with pytest.raises(CapError, match="STUDIO_MAX_INIT_PIXELS"):
        load_init_image(Image.new("L", (2100, 2100)), PUBLIC)


@pytest.mark.hostile
@pytest.mark.parametrize("value", [5, ["x"], {"a": 1}, "x" * 2001], ids=["int", "list", "dict", "2001-chars"])
def test_hostile_negative_prompts(value):
    with pytest.raises(ValueError, match="negative_prompt must be text of at most 2000 characters"):
        GenerateRequest(prompt="a", negative_prompt=value)


def test_negative_prompt_none_means_no_negative_prompt():
    """Issue 13 (7): negative_prompt=None gave "NoneType has no len()"."""
    request = GenerateRequest(prompt="a", negative_prompt=None)
    assert request.negative_prompt == "" and request.to_dict()["negative_prompt"] == ""


@pytest.mark.hostile
@pytest.mark.parametrize("models,changes,match", [
    (["a", "b", "c", "d"], {}, r"models per request 4 is above this server's cap of 3 \(STUDIO_MAX_MODELS\)"),
    (["a"], {"steps": 31}, r"steps 31 is above this server's cap of 30 \(STUDIO_MAX_STEPS\)"),
    (["a"], {"steps": 150}, r"steps 150 is above this server's cap of 30"),
    (["a"], {"width": 2048}, r"width 2,048 is above this server's cap of 1,024 \(STUDIO_MAX_SIZE\)"),
    (["a"], {"height": 1032}, r"height 1,032 is above this server's cap of 1,024"),
    (["a"], {"batch_size": 3}, r"images per model 3 is above this server's cap of 2 \(STUDIO_MAX_BATCH\)"),
    (["a"], {"batch_size": 8}, r"images per model 8 is above"),
], ids=["4-models", "31-steps", "150-steps", "width-2048", "height-1032", "batch-3", "batch-8"])
def test_hostile_generation_requests_hit_the_caps_before_anything_loads(models, changes, match):
    """The caps live in core (``iter_side_by_side(caps=...)``): checked before any name resolves ("a" is no model:
    resolving it first would say "unknown model") and before any model loads."""
    request = GenerateRequest(prompt="x", **changes)
    cache = ModelCache()
    with pytest.raises(CapError, match=match):
        next(iter_side_by_side(cache, models, request, caps=PUBLIC))
    assert not cache._models  # nothing was loaded
    local = Caps.defaults("local")
    with pytest.raises(ValueError, match="unknown model"):  # locally the same request is within the caps
        next(iter_side_by_side(cache, models[:1], request, caps=local))
