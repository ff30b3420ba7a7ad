"""How far a conditional few-step model's ControlNet adapter has moved from its zero initialisation: the mean |w| of
its zero-initialised layers (the condition encoder's last convolution and the 1x1 convolutions that add its residuals
to the UNet). Values near 0 mean the UNet still barely sees the condition image.

    python scripts/sr_adapter_probe.py                       # assets/demo/sr
    python scripts/sr_adapter_probe.py assets/demo/sr/baselines/undistilled
"""
from __future__ import annotations

import sys

from diffusers import ControlNetModel


def zero_init_magnitudes(folder: str) -> dict[str, float]:
    controlnet = ControlNetModel.from_pretrained(f"{folder}/controlnet")
    return {n: p.detach().abs().float().mean().item() for n, p in controlnet.named_parameters()
            if n.endswith("weight") and ("controlnet_down_blocks" in n or "controlnet_mid_block" in n
                                         or "cond_embedding.conv_out" in n)}


if __name__ == "__main__":
    for folder in sys.argv[1:] or ["assets/demo/sr"]:
        for name, value in zero_init_magnitudes(folder).items():
            print(f"{folder}  {name:48s} mean |w| = {value:.2e}")
