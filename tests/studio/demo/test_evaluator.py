"""studio.demo.evaluator: >= 99 % on ground truth (clean, blurred + noisy, held-out), chance on noise, clear errors."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

from studio.demo.evaluator import (ATTRIBUTES, CHANCE, EvaluatorConfig, analyze, evaluate, evaluate_batch,
                              parse_prompt)
from studio.demo.shapes import ALL_COMBOS, COLOURS, SHAPES, caption, render, sample


def _degrade(image: Image.Image, seed: int) -> Image.Image:
    """What a tiny diffusion model's output looks like: soft edges plus pixel noise."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(image.filter(ImageFilter.GaussianBlur(1.2)), dtype=float) + rng.normal(0, 12, (64, 64, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("split, n, degrade", [("train", 240, False), ("heldout", 72, False),
                                               ("train", 240, True), ("heldout", 72, True)])
def test_ground_truth_accuracy(split, n, degrade):
    items = [sample(i, split, seed=11) for i in range(n)]
    images = [_degrade(s.image, i) if degrade else s.image for i, s in enumerate(items)]
    report = evaluate_batch(images, [s.text for s in items])
    assert report["n"] == n
    for attr in ATTRIBUTES:
        assert report["accuracy"][attr] >= 0.99, (attr, report["accuracy"])


def test_every_combination_smallest_size_recognised():
    """Each (shape, colour, background) at the smallest drawn size, in a corner."""
    wrong = []
    for shape, colour, bg in ALL_COMBOS:
        img = render(shape, colour, bg, (2.0, 38.0, 26.3, 62.3))
        res = evaluate(img, caption(shape, colour, bg))
        if not res.all_correct:
            wrong.append((shape, colour, bg, res.correct))
    assert len(wrong) <= len(ALL_COMBOS) // 100, wrong


def test_uniform_noise_is_near_chance():
    rng = np.random.default_rng(0)
    n = 240
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]
    prompts = [caption(*ALL_COMBOS[i]) for i in rng.integers(0, len(ALL_COMBOS), n)]
    acc = evaluate_batch(images, prompts)["accuracy"]
    for attr in ATTRIBUTES:  # chance is 1/8, ~1/7, 1/6; 4 standard errors of slack
        assert acc[attr] <= CHANCE[attr] + 4 * np.sqrt(CHANCE[attr] * (1 - CHANCE[attr]) / n), (attr, acc)
    assert acc["all"] <= 0.05


def test_wrong_prompt_is_caught_per_attribute():
    img = render("star", "red", "blue", (10, 10, 45, 45))
    assert evaluate(img, "a red star on a blue background").all_correct
    assert evaluate(img, "a red circle on a blue background").correct == {
        "background": True, "colour": True, "shape": False}
    assert evaluate(img, "a green star on a blue background").correct["colour"] is False
    assert evaluate(img, "a red star on a white background").correct["background"] is False


def test_scores_and_blank_image():
    res = evaluate(render("ring", "white", "black", (12, 12, 48, 48)), "a white ring on a black background")
    assert res.scores["shape"] > 0.85 and res.scores["background"] > 0.95 and res.scores["colour"] > 0.9
    assert max(res.detection.shape_iou, key=res.detection.shape_iou.get) == "ring"
    blank = Image.new("RGB", (64, 64), (30, 60, 220))
    det = analyze(blank)
    assert det.background == "blue" and det.colour is None and det.shape is None
    res = evaluate(blank, "a red square on a blue background")
    assert res.correct == {"background": True, "colour": False, "shape": False}


def test_accepts_other_sizes_and_arrays():
    s = sample(5, "train", seed=2)
    big = s.image.resize((128, 128), Image.NEAREST)
    assert evaluate(big, s.text).all_correct
    assert evaluate(np.asarray(s.image), s.text).all_correct
    assert evaluate(np.asarray(s.image, dtype=np.float32) / 255, s.text).all_correct


def test_parse_prompt():
    assert parse_prompt("a red circle on a blue background") == parse_prompt("  A Red CIRCLE on a Blue background ")
    spec = parse_prompt("a white cross on a black background")
    assert (spec.shape, spec.colour, spec.background) == ("cross", "white", "black")
    assert len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1) == len(ALL_COMBOS)


@pytest.mark.parametrize("prompt, match", [
    ("a red circle", "does not match"),
    ("a pink circle on a blue background", "unknown shape colour 'pink'"),
    ("a red hexagon on a blue background", "unknown shape 'hexagon'"),
    ("a red circle on a grey background", "unknown background colour 'grey'"),
    ("a red circle on a red background", "must differ"),
    (42, "must be a string"),
])
def test_parse_prompt_errors(prompt, match):
    with pytest.raises(ValueError, match=match):
        parse_prompt(prompt)


def test_batch_length_mismatch_and_config_validation():
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        evaluate_batch([Image.new("RGB", (64, 64))] * 2, ["a red circle on a blue background"])
    with pytest.raises(ValueError, match="EvaluatorConfig.border"):
        EvaluatorConfig(border=0)
    with pytest.raises(ValueError, match="EvaluatorConfig.min_contrast"):
        EvaluatorConfig(min_contrast=300)
