"""An offline Hugging Face cache laid out like the real SDXL, SSD-1B and Vega repos, holding tiny models.

Repo ids, file names (plain fp32 files and the ``fp16`` variant files) and the cache layout (refs/main,
snapshots/<commit>, blobs) are the real ones; the models are tiny SDXL-layout pipelines. SDXL and both students share
the same text encoders and VAE (seeds 1-3) and differ in the UNet's transformer depths, as the real ones do.
``hub`` points ``huggingface_hub`` at it for one test (what HF_HUB_CACHE does for a process).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import UNet2DConditionModel

from studio.build import unet_config
from studio.hubcache import add_repo
from studio.registry import get_spec
from tests.conftest import TINY_ARCH, make_tiny_pipeline

TINY_DEPTHS = {"sdxl": (1, 2, 10), "ssd-1b": (1, 2, 4), "vega": (1, 1, 2)}


def tiny_repo_pipeline(model: str, seed: int = 0):
    """The tiny stand-in of a real repo: shared text encoders/VAE, the model's own (smaller) UNet."""
    pipe = make_tiny_pipeline(seed=0)
    torch.manual_seed(seed + len(model))
    pipe.unet = UNet2DConditionModel(**unet_config(replace(TINY_ARCH, transformer_layers_per_block=TINY_DEPTHS[model])))
    return pipe


def save_repo(cache_dir, repo_id: str, pipe, *, fp16_pipe=None) -> None:
    """Save ``pipe`` as a hub repo with plain files and fp16 variant files (``fp16_pipe``'s weights if given)."""
    folder = cache_dir / ".staging"
    pipe.save_pretrained(folder)
    (fp16_pipe or pipe).to(torch.float16).save_pretrained(folder, variant="fp16")
    (fp16_pipe or pipe).to(torch.float32)
    add_repo(cache_dir, repo_id, folder)


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-cache")
    for model in TINY_DEPTHS:
        save_repo(root, get_spec(model).source, tiny_repo_pipeline(model))
    return root


@pytest.fixture
def hub(tiny_hub, monkeypatch):
    """huggingface_hub (and so diffusers and transformers) reads this cache in this test; offline."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tiny_hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tiny_hub
