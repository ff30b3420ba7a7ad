"""studio.demo.shapes: determinism, captions, held-out split, imagefolder export."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from studio.demo import shapes
from studio.demo.shapes import (ALL_COMBOS, COLOURS, DEMO_WORDS, HELDOUT, PALETTE, SHAPES, TRAIN_COMBOS,
                                SyntheticConfig, export_imagefolder, sample, samples)

CAPTION = re.compile(r"^a (\w+) (\w+) on a (\w+) background$")


def test_same_seed_identical_bytes_and_other_seed_differs():
    a = [sample(i, "train", seed=3).image.tobytes() for i in range(20)]
    b = [sample(i, "train", seed=3).image.tobytes() for i in range(20)]
    c = [sample(i, "train", seed=4).image.tobytes() for i in range(20)]
    assert a == b
    assert sum(x != y for x, y in zip(a, c)) >= 18


def test_vocabulary_sizes_and_palette_separation():
    assert len(SHAPES) >= 5 and len(COLOURS) >= 8
    rgb = np.array([PALETTE[c] for c in COLOURS], dtype=float)
    dist = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1)) + np.eye(len(COLOURS)) * 1e9
    assert dist.min() > 100
    assert set(DEMO_WORDS) == {"a", "on", "background", *SHAPES, *COLOURS}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_caption_format_and_pixels_match_attributes(split):
    for s in samples(SyntheticConfig(split=split, count=60)):
        m = CAPTION.match(s.text)
        assert m is not None, s.text
        assert m.groups() == (s.colour, s.shape, s.background)
        assert s.colour != s.background
        arr = np.asarray(s.image)
        assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
        assert tuple(arr[0, 0]) == PALETTE[s.background]
        side = s.box[2] - s.box[0]
        assert 0.35 * 64 <= side <= 0.6 * 64 + 1e-6
        cx, cy = int((s.box[0] + s.box[2]) / 2), int((s.box[1] + s.box[3]) / 2)
        if s.shape != "ring":  # the ring's centre is its hole
            assert tuple(arr[cy, cx]) == PALETTE[s.colour]


def test_heldout_combos_excluded_from_train():
    held = set(HELDOUT)
    assert len(held) == len(HELDOUT) >= 10
    assert held.isdisjoint(TRAIN_COMBOS)
    assert len(TRAIN_COMBOS) + len(HELDOUT) == len(ALL_COMBOS)
    seen = {(s.shape, s.colour, s.background) for s in samples(SyntheticConfig(count=3000))}
    assert seen.isdisjoint(held)
    assert len(seen) > 0.95 * len(TRAIN_COMBOS)
    held_seen = {(s.shape, s.colour, s.background) for s in samples(SyntheticConfig(split="heldout", count=200))}
    assert held_seen == held
    # every attribute value of a held-out combo still appears in train, with other partners
    for shape, colour, bg in HELDOUT:
        assert any(c[0] == shape for c in TRAIN_COMBOS)
        assert any(c[1] == colour for c in TRAIN_COMBOS) and any(c[2] == bg for c in TRAIN_COMBOS)


def test_imagefolder_export(tmp_path):
    out = export_imagefolder(tmp_path / "ds", 12, "heldout", seed=1)
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 12
    for i, line in enumerate(lines):
        row = json.loads(line)
        assert CAPTION.match(row["text"])
        img = Image.open(out / row["file_name"])
        assert img.size == (64, 64) and img.mode == "RGB"
        s = sample(i, "heldout", seed=1)
        assert row["text"] == s.text
        assert np.array_equal(np.asarray(img), np.asarray(s.image))
    assert len(list(out.glob("*.png"))) == 12


def test_cli_writes_imagefolder(tmp_path):
    shapes.main(["--out", str(tmp_path / "cli"), "--count", "3", "--split", "train"])
    assert len((tmp_path / "cli" / "metadata.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("kwargs, field", [
    (dict(seed=-1), "seed"), (dict(size=8), "size"), (dict(count=0), "count"), (dict(split="test"), "split")])
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=f"SyntheticConfig.{field}"):
        SyntheticConfig(**kwargs)


def test_bad_split_and_index_raise():
    with pytest.raises(ValueError, match="split"):
        sample(0, "validation")
    with pytest.raises(ValueError, match="index"):
        sample(-1)
