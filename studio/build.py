"""Build SDXL-architecture pipelines from a small config: the tiny models of the tests and the demo family.

    pipe = build_sdxl_pipeline(SDXLArch(), tokenizer)

The layout is SDXL's exactly (DownBlock2D + CrossAttnDownBlock2D ×2, transformer depths [1, 2, 10], a
cross-attention mid block, two CLIP text encoders, ``text_time`` added conditioning, an AutoencoderKL); only widths
shrink. Layer-removal recipes written for SDXL therefore apply unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


@dataclass(frozen=True)
class SDXLArch:
    """Widths of an SDXL-layout pipeline (SDXL itself: 320/640/1280 channels, head dim 64, 768+1280 text)."""

    block_out_channels: tuple[int, ...] = (16, 32, 64)  # UNet channels per resolution level
    transformer_layers_per_block: tuple[int, ...] = (1, 2, 10)  # SDXL's depths (first level has no attention)
    layers_per_block: int = 2
    head_dim: int = 16  # UNet attention head width
    norm_num_groups: int = 8
    text_hidden: tuple[int, int] = (32, 64)  # text encoder 1 and 2 widths (SDXL: 768, 1280)
    text_layers: tuple[int, int] = (2, 2)
    text_heads: int = 4
    projection_dim: int = 32  # pooled text embedding of encoder 2 (SDXL: 1280)
    addition_time_embed_dim: int = 8  # per size/crop id (SDXL: 256)
    vae_channels: tuple[int, ...] = (16, 32, 32)  # one entry per VAE level; scale factor 2 ** (n - 1)
    latent_channels: int = 4
    image_size: int = 64  # default pixel size

    def __post_init__(self):
        for name in ("block_out_channels", "vae_channels"):
            for c in getattr(self, name):
                if c <= 0 or c % self.norm_num_groups:
                    raise ValueError(f"SDXLArch.{name}: every width must be a positive multiple of "
                                     f"norm_num_groups={self.norm_num_groups}; got {getattr(self, name)}")
        if len(self.transformer_layers_per_block) != len(self.block_out_channels):
            raise ValueError("SDXLArch.transformer_layers_per_block needs one depth per block_out_channels entry")
        for c in self.block_out_channels[1:]:
            if c % self.head_dim:
                raise ValueError(f"SDXLArch.head_dim={self.head_dim} must divide the attention widths "
                                 f"{self.block_out_channels[1:]}")
        scale = 2 ** (len(self.vae_channels) - 1)
        if self.image_size % (scale * 2 ** (len(self.block_out_channels) - 1)):
            raise ValueError(f"SDXLArch.image_size={self.image_size} must be divisible by the VAE factor {scale} "
                             f"times the UNet downsampling {2 ** (len(self.block_out_channels) - 1)}")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def text_encoder_config(arch: SDXLArch, index: int, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    hidden = arch.text_hidden[index]
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=arch.text_layers[index], num_attention_heads=arch.text_heads,
        max_position_embeddings=tokenizer.model_max_length, projection_dim=arch.projection_dim,
        hidden_act="gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def unet_config(arch: SDXLArch) -> dict:
    """A diffusers UNet2DConditionModel config with SDXL's layout at ``arch``'s widths."""
    n = len(arch.block_out_channels)
    return dict(
        sample_size=arch.image_size // arch.vae_scale_factor,
        in_channels=arch.latent_channels, out_channels=arch.latent_channels,
        down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
        up_block_types=["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=list(arch.block_out_channels), layers_per_block=arch.layers_per_block,
        transformer_layers_per_block=list(arch.transformer_layers_per_block),
        attention_head_dim=[max(1, c // arch.head_dim) for c in arch.block_out_channels],
        use_linear_projection=True, norm_num_groups=arch.norm_num_groups,
        cross_attention_dim=sum(arch.text_hidden),
        addition_embed_type="text_time", addition_time_embed_dim=arch.addition_time_embed_dim,
        projection_class_embeddings_input_dim=arch.projection_dim + 6 * arch.addition_time_embed_dim,
    )


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's scheduler settings."""
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")


def build_sdxl_pipeline(arch: SDXLArch, tokenizer: CLIPTokenizer, *, seed: int = 0,
                        vae_scaling_factor: float = 1.0) -> StableDiffusionXLPipeline:
    """Randomly initialised SDXL-layout pipeline (fp32, CPU); seeded so two calls give identical weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(arch))
    torch.manual_seed(seed + 1)
    n = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=arch.latent_channels,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(arch.vae_channels), layers_per_block=1, norm_num_groups=arch.norm_num_groups,
        sample_size=arch.image_size, scaling_factor=vae_scaling_factor, force_upcast=False)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_encoder_config(arch, 0, tokenizer))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_encoder_config(arch, 1, tokenizer))
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=sdxl_scheduler())
