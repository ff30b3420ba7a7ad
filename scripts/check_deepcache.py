"""studio.reuse against the DeepCache package (not a requirement): same images for the same interval and branch.

    pip install --no-deps --target /tmp/deepcache DeepCache==0.1.1
    PYTHONPATH=/tmp/deepcache python scripts/check_deepcache.py

On the demo teacher (8 Euler steps, one prompt), for each (interval, branch) it prints the largest difference between
DeepCache's ``DeepCacheSDHelper`` image and studio.reuse's (0.0 = identical), the difference from the plain pipeline,
and how many steps ran the whole UNet; then whether the UNet's modules were left as they were.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from DeepCache import DeepCacheSDHelper
from diffusers import StableDiffusionXLPipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from studio.paths import DEMO_DIR
from studio.reuse import FeatureReuse

torch.set_num_threads(1)
pipe = StableDiffusionXLPipeline.from_pretrained(DEMO_DIR / "teacher")
pipe.set_progress_bar_config(disable=True)


def run(callback=None) -> np.ndarray:
    with torch.inference_mode():
        return pipe("a red circle on a blue background", num_inference_steps=8, output_type="np",
                    generator=torch.Generator().manual_seed(0), callback_on_step_end=callback).images[0]


plain = run()
modules_before = {n: sorted(m.__dict__) for n, m in pipe.unet.named_modules()}
for interval, branch in [(1, 0), (2, 0), (3, 0), (3, 1), (3, 2), (3, 4), (2, 7)]:
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    reference = run()
    helper.disable()
    for module in pipe.unet.modules():  # DeepCache leaves bound-method forwards behind; ours must not rely on it
        module.__dict__.pop("forward", None)
    with FeatureReuse(pipe.unet, interval, branch) as reuse:
        ours = run(lambda p, i, t, kw: (reuse.next_step(), kw)[1])
    print(f"interval {interval} branch {branch}: |ours - DeepCache| max {np.abs(ours - reference).max():.6f}; "
          f"|ours - plain| max {np.abs(ours - plain).max():.4f}; whole-UNet steps {reuse.full_steps}, reused "
          f"{reuse.reused_steps}")
print("modules left as they were:", modules_before == {n: sorted(m.__dict__) for n, m in pipe.unet.named_modules()})
