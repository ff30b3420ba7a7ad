"""The few-step student's pieces: the consistency math (LCMScheduler's boundary scalings are used as they are; here
the x0 / epsilon reading of a model output, the DDIM solver step and the loss distance), the denoiser module (UNet
plus optional condition adapter) and the adapters built for a UNet: a tiny ControlNet or a T2I-Adapter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bcast(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def x0_and_eps(output: torch.Tensor, z: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, epsilon) implied by a model ``output`` (epsilon or v prediction) at the noisy latent ``z``, timesteps ``t``."""
    a = bcast(alphas_cumprod[t])
    if prediction_type == "v_prediction":
        return a.sqrt() * z - (1 - a).sqrt() * output, a.sqrt() * output + (1 - a).sqrt() * z
    return (z - (1 - a).sqrt() * output) / a.sqrt(), output


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, t_to: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The deterministic DDIM update to timestep ``t_to`` from an (x0, epsilon) pair."""
    a = bcast(alphas_cumprod[t_to])
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def consistency_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "huber", c: float = 1e-3) -> torch.Tensor:
    """Mean pseudo-Huber sqrt((a - b)^2 + c^2) - c (elementwise, as diffusers' LCM scripts) or mean squared error."""
    if kind == "l2":
        return F.mse_loss(a.float(), b.float())
    return (torch.sqrt((a.float() - b.float()) ** 2 + c * c) - c).mean()


class FewStepModules(torch.nn.Module):
    """A denoiser: a UNet (a full student, or a frozen UNet carrying LoRA adapters) plus, for conditional students, a
    condition adapter — a ControlNet (residuals added to the skip connections and the mid block) or a T2I-Adapter
    (features added inside the encoder). ``forward`` returns the UNet output (epsilon or v)."""

    def __init__(self, unet, adapter=None):
        super().__init__()
        self.unet = unet
        self.adapter = adapter

    def enable_gradient_checkpointing(self):
        self.unet.enable_gradient_checkpointing()
        if self.adapter is not None and self.adapter._supports_gradient_checkpointing:
            self.adapter.enable_gradient_checkpointing()

    def forward(self, z, t, text: dict, control=None, timestep_cond=None):
        from diffusers import T2IAdapter

        kwargs = {"encoder_hidden_states": text["prompt_embeds"],
                  "added_cond_kwargs": {"text_embeds": text["pooled"], "time_ids": text["time_ids"]}}
        if isinstance(self.adapter, T2IAdapter):  # the UNet pops from the list: a fresh one each call
            kwargs["down_intrablock_additional_residuals"] = list(self.adapter(control))
        elif self.adapter is not None:
            down, mid = self.adapter(z, t, controlnet_cond=control, return_dict=False, **kwargs)
            kwargs |= {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.unet(z, t, timestep_cond=timestep_cond, **kwargs).sample


def build_adapter(unet, kind: str = "controlnet", channels=(16, 32, 32), vae_scale_factor: int = 8):
    """The condition adapter ``kind`` for ``unet`` (``build_controlnet`` or ``build_t2i_adapter``)."""
    if kind == "t2i-adapter":
        return build_t2i_adapter(unet, vae_scale_factor)
    return build_controlnet(unet, channels)


def build_t2i_adapter(unet, vae_scale_factor: int = 8):
    """A T2I-Adapter (diffusers' ``full_adapter_xl`` layout) whose four features match ``unet``'s encoder: the first
    block's downsampled output, the second block's last layer, the third block's and the mid block (SDXL: 320/640/1280/
    1280 channels at 1/16, 1/16, 1/32, 1/32 of the image). Its pixel unshuffle is twice the VAE's factor (16 for
    SDXL, 8 for the demo family's 4x VAE). Ordinary initialisation: unlike a ControlNet's zero convolutions its
    features reach the UNet from the first step."""
    from diffusers import T2IAdapter

    c = unet.config
    if len(c.block_out_channels) != 3:
        raise ValueError(f"a T2I-Adapter (XL layout) needs a UNet with 3 down blocks, as SDXL's; this one has "
                         f"{len(c.block_out_channels)}")
    a, b, d = c.block_out_channels
    return T2IAdapter(in_channels=3, channels=[a, b, d, d], num_res_blocks=2, downscale_factor=2 * vae_scale_factor,
                      adapter_type="full_adapter_xl")


def build_controlnet(unet, channels=(16, 32, 32)):
    """A tiny ControlNet for ``unet``: the UNet's encoder layout with plain ``DownBlock2D`` blocks and an
    attention-free mid block (its resnets, resamplers, conv_in and time embedding copied from the UNet, as ControlNet
    copies the encoder), zero-initialised output convolutions (the UNet is unchanged at step 0) and a condition
    encoder of ``len(channels) - 1`` stride-2 convolutions (4x for the demo VAE, 8x for SDXL's)."""
    from diffusers import ControlNetModel

    c = unet.config
    layers = c.layers_per_block if isinstance(c.layers_per_block, int) else c.layers_per_block[0]
    controlnet = ControlNetModel(
        in_channels=c.in_channels, conditioning_channels=3, flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift,
        down_block_types=("DownBlock2D",) * len(c.block_out_channels), mid_block_type="UNetMidBlock2D",
        block_out_channels=tuple(c.block_out_channels), layers_per_block=layers, norm_num_groups=c.norm_num_groups,
        norm_eps=c.norm_eps, cross_attention_dim=c.cross_attention_dim, conditioning_embedding_out_channels=tuple(channels))
    own = controlnet.state_dict()
    copied = {k: v for k, v in unet.state_dict().items() if k in own and own[k].shape == v.shape}
    controlnet.load_state_dict(copied, strict=False)
    return controlnet
