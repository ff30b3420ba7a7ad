"""Released configs of the SDXL and SD 1.x families, committed under ``assets/configs/<model>/<component>/`` (laid out
like the hub repos), so block maps, removal recipes, the Layers tab and the tests use the real shapes with no weights
and no network.

    unet_config = released_unet_config("ssd-1b")        # segmind/SSD-1B's unet/config.json
    released_models()                                    # ['bk-sdm-base', 'bk-sdm-small', ..., 'vega']
"""
from __future__ import annotations

import json

from studio.paths import ASSETS_DIR

RELEASED_DIR = ASSETS_DIR / "configs"
VAE_SCALE_FACTOR = 8  # every SD 1.x / SDXL VAE: 4 levels, 3 downsamplings (used when no vae/config.json is here)


def released_models() -> list[str]:
    """Names of the models whose UNet config is committed."""
    return sorted(p.parent.parent.name for p in RELEASED_DIR.glob("*/unet/config.json"))


def released_unet_config(name: str) -> dict:
    """The released UNet config of ``name``; ValueError naming the ones there are."""
    path = RELEASED_DIR / name / "unet" / "config.json"
    if name not in released_models():
        raise ValueError(f"no released UNet config {name!r}; there are: {', '.join(released_models())}")
    return json.loads(path.read_text())


def released_vae_scale_factor(name: str) -> int:
    """2 ** (VAE levels - 1) from the released ``vae/config.json`` when committed, else VAE_SCALE_FACTOR."""
    path = RELEASED_DIR / name / "vae" / "config.json"
    if not path.is_file():
        return VAE_SCALE_FACTOR
    return 2 ** (len(json.loads(path.read_text())["block_out_channels"]) - 1)
