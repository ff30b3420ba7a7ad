"""Feature reuse across denoising steps (DeepCache: Ma, Fang and Wang 2023, arXiv 2312.00858), for any diffusers
``UNet2DConditionModel`` of the SD/SDXL family, applied for one call and removed afterwards.

    with FeatureReuse(pipe.unet, interval=3, branch=0) as reuse:
        pipe(prompt, callback_on_step_end=lambda p, i, t, kw: (reuse.next_step(), kw)[1])

Adjacent denoising steps change the UNet's deep, low-resolution features very little. Every ``interval`` steps the
whole UNet runs and the outputs of its deep modules are kept; on the steps between, those modules return the kept
outputs and only the shallow branch runs: ``conv_in``, the skip connection of branch ``branch`` and the outer up-block
layers after it, ``conv_out``. The branch numbering is DeepCache's ``cache_branch_id`` (0 = the shallowest: only the
last resnet of the outermost up block is recomputed; block = branch // 3, layer = branch % 3, counted from the image
side), so results match its ``DeepCacheSDHelper`` for the same interval and branch.

Differences from the ``DeepCache`` package (0.1.1, December 2023, which still runs on diffusers 0.42): the step is
counted by the caller (``next_step()`` after each denoising step, outside the UNet, so no timestep lookup — the
package's ``list(scheduler.timesteps).index(t)`` miscounts when a schedule repeats a timestep, as DPM++ 2M Karras
does from 45 steps on — and no device sync per step); the patched modules are left exactly as they were (their
instance ``forward`` attribute removed, not replaced by a bound method); and only the modules that are skipped are
patched. Compute saved per reused step: everything but the shallow branch (``skipped_modules``).
"""
from __future__ import annotations

import torch

MAX_INTERVAL = 10  # beyond this the kept features are too stale to be useful (DeepCache reports up to N = 10)
LAYERS_PER_BLOCK_ID = 3  # DeepCache's branch id packs (block, layer) as block * 3 + layer


def max_branch(unet) -> int:
    """The largest branch id for this UNet (3 per resolution level, minus one)."""
    return LAYERS_PER_BLOCK_ID * len(unet.down_blocks) - 1


def check_reuse(interval: int, branch: int, unet=None) -> None:
    """ValueError naming the allowed range (the branch's upper bound depends on the UNet, when given)."""
    if isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= MAX_INTERVAL:
        raise ValueError(f"feature_reuse (the reuse interval) must be an integer from 1 (off) to {MAX_INTERVAL}; "
                         f"got {interval!r}")
    top = max_branch(unet) if unet is not None else LAYERS_PER_BLOCK_ID * 4 - 1
    if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch <= top:
        where = "for this model's UNet" if unet is not None else ""
        raise ValueError(f"feature_reuse_branch must be an integer from 0 (shallowest) to {top} {where}; "
                         f"got {branch!r}".replace("  ", " "))


def skipped_modules(unet, branch: int = 0) -> list[tuple[str, torch.nn.Module]]:
    """(path, module) of every module that returns its kept output on a reused step, none nested in another.

    Down block ``i`` and the up block ``i`` counted from the image side form level ``i``. Levels deeper than the
    branch's block go whole, the mid block too; in the branch's own level the down block loses its layers from the
    branch's layer on (its downsampler is the layer after the last resnet) and the up block its layers beyond it.
    """
    check_reuse(1, branch, unet)
    block, layer = divmod(branch, LAYERS_PER_BLOCK_ID)
    out = []
    for i, down in enumerate(unet.down_blocks):
        name = f"down_blocks.{i}"
        if i > block or (i == block and layer == 0):
            out.append((name, down))
        elif i == block:
            resnets = list(down.resnets)
            attentions = list(getattr(down, "attentions", None) or [])
            for j in range(layer, len(resnets)):
                out.append((f"{name}.resnets.{j}", resnets[j]))
                if j < len(attentions):
                    out.append((f"{name}.attentions.{j}", attentions[j]))
            if len(resnets) >= layer:
                out += [(f"{name}.downsamplers.{k}", m) for k, m in enumerate(down.downsamplers or [])]
    if unet.mid_block is not None:
        out.append(("mid_block", unet.mid_block))
    n = len(unet.up_blocks)
    for k, up in enumerate(unet.up_blocks):
        i, name = n - 1 - k, f"up_blocks.{k}"
        if i > block:
            out.append((name, up))
        elif i == block:
            resnets = list(up.resnets)
            attentions = list(getattr(up, "attentions", None) or [])
            for j in range(len(resnets)):
                if len(resnets) - 1 - j > layer:  # layers counted from the block's output side
                    out.append((f"{name}.resnets.{j}", resnets[j]))
                    if j < len(attentions):
                        out.append((f"{name}.attentions.{j}", attentions[j]))
    return out


class FeatureReuse:
    """Context manager: inside it, the UNet's deep modules run every ``interval`` steps and are reused between.

    Call ``next_step()`` once after each denoising step (the pipeline's ``callback_on_step_end``); step 0 and every
    ``interval``-th step after it run the whole UNet. ``interval=1`` patches the modules but never reuses (the same
    computation as without it). Not re-entrant; one denoising loop at a time.
    """

    def __init__(self, unet, interval: int, branch: int = 0):
        check_reuse(interval, branch, unet)
        self.unet, self.interval, self.branch = unet, interval, branch
        self.step, self.reusing = 0, False
        self.full_steps = self.reused_steps = 0
        self._kept: dict[str, object] = {}
        self._patched: list[tuple[torch.nn.Module, object]] = []

    def next_step(self) -> None:
        """The denoising step just finished; decide whether the next one reuses the kept features."""
        if self.reusing:
            self.reused_steps += 1
        else:
            self.full_steps += 1
        self.step += 1
        self.reusing = self.step % self.interval != 0

    def _wrap(self, key: str, forward):
        def forward_or_reuse(*args, **kwargs):
            if self.reusing:
                return self._kept[key]
            out = forward(*args, **kwargs)
            self._kept[key] = out
            return out
        return forward_or_reuse

    def __enter__(self) -> "FeatureReuse":
        try:
            for path, module in skipped_modules(self.unet, self.branch):
                self._patched.append((module, module.__dict__.get("forward")))
                module.forward = self._wrap(path, module.forward)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for module, previous in reversed(self._patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous
        self._patched.clear()
        self._kept.clear()
