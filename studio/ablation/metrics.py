"""Image distances to the full model's image: PSNR (dB, 8-bit range), SSIM (Wang et al. 2004, "Image quality
assessment: from error visibility to structural similarity": 11x11 Gaussian window, sigma = 1.5, K1 = 0.01,
K2 = 0.03, per RGB channel on [0, 1] images with a torch depthwise convolution over the valid region, then averaged),
and the demo evaluator's prompt fidelity.

    ssim(full, ablated), psnr(full, ablated), fidelity(image, "a red circle on a blue background")
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from studio.demo.evaluator import evaluate, parse_prompt


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB of two same-size 8-bit images (``inf`` when identical)."""
    mse = float(((_to_tensor(a) - _to_tensor(b)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: Image.Image, b: Image.Image, *, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) over the valid region, per RGB channel; 1.0 for identical images."""
    x, y = _to_tensor(a).double(), _to_tensor(b).double()  # (1, 3, H, W) in [0, 1]
    if x.shape != y.shape:
        raise ValueError(f"ssim: images differ in size ({a.size} vs {b.size})")
    window = min(window, x.shape[-1], x.shape[-2])
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window)  # depthwise: one window per channel

    def blur(t):
        return torch.nn.functional.conv2d(t, kernel, groups=3)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def fidelity(image: Image.Image, prompt: str) -> float | None:
    """Share of the prompt's attributes (background, colour, shape) the evaluator finds; None if it cannot parse."""
    try:
        parse_prompt(prompt)
    except ValueError:
        return None
    return float(np.mean(list(evaluate(image, prompt).correct.values())))
