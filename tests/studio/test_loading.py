"""Loading paths (folder, UNet-only folder, single .safetensors), component sharing, LRU budget, clear errors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from studio.build import SDXLArch, build_sdxl_pipeline
from studio.generation import GenerateRequest, generate
from studio.loading import ModelCache, ModelLoadError, resolve_spec
from studio.paths import model_roots, models_dir
from studio.registry import ModelSpec, get_spec, list_models
from studio.demo.tokenizer import build_tokenizer
from tests.conftest import TINY_WORDS


def image(pipe, seed=1):
    return np.asarray(generate(pipe, GenerateRequest(prompt="a red circle", seed=seed, steps=2)).images[0])


def test_exported_models_join_the_registry(family):
    names = {s.name: s for s in list_models()}
    assert names["tiny-base"].base is None and names["tiny-student"].base == "tiny-base"
    assert {"sdxl", "ssd-1b", "vega"} <= set(names)
    assert get_spec("ssd-1b").base == "sdxl" and get_spec("vega").base == "sdxl"


def test_folder_load_matches_the_saved_pipeline(family, tiny_folder):
    from tests.conftest import make_tiny_pipeline

    pipe = ModelCache().get("tiny-base")
    assert np.array_equal(image(pipe), image(make_tiny_pipeline(seed=0)))


def test_base_model_components_are_shared_not_copied(family):
    cache = ModelCache()
    base, student = cache.get("tiny-base"), cache.get("tiny-student")
    for comp in ("text_encoder", "text_encoder_2", "vae", "tokenizer", "tokenizer_2"):
        assert getattr(student, comp) is getattr(base, comp)
    assert student.unet is not base.unet
    unet_bytes = sum(p.numel() * p.element_size() for p in student.unet.parameters())
    base_bytes = cache.memory_bytes()  # both loaded
    assert base_bytes < 2 * (base_bytes - unet_bytes)  # shared parts counted once
    assert not np.array_equal(image(base), image(student))


def test_identical_component_files_are_shared_between_full_pipelines(family):
    cache = ModelCache()
    a, b = cache.get(str(family["base"])), cache.get(str(family["sibling"]))
    assert a.text_encoder is b.text_encoder and a.vae is b.vae and a.unet is not b.unet


def test_single_safetensors_unet_file(family, tmp_path):
    cache = ModelCache()
    file = models_dir() / "student-single.safetensors"
    folder_student = cache.get("tiny-student")
    save_file({k: v.contiguous() for k, v in folder_student.unet.state_dict().items()}, file)
    single = cache.get(ModelSpec("student-single", str(file), base="tiny-base"))
    assert single.vae is folder_student.vae
    assert np.array_equal(image(single), image(folder_student))


def test_lru_eviction_under_a_memory_budget(family):
    probe = ModelCache()
    probe.get("tiny-base"), probe.get("tiny-student")
    two = probe.memory_bytes()
    cache = ModelCache(budget_bytes=two)
    cache.get("tiny-base"), cache.get("tiny-student"), cache.get("tiny-base")  # touch base: student is LRU
    cache.get(str(family["sibling"]))  # one more UNet: over budget, evict the least recently used
    assert cache.loaded() == ["tiny-base", "tiny-sibling"]
    assert cache.memory_bytes() <= two
    tiny = ModelCache(budget_bytes=1)
    tiny.get("tiny-base"), tiny.get(str(family["sibling"]))
    assert tiny.loaded() == ["tiny-sibling"]  # the newest always stays


def test_bad_sources_get_clear_errors_and_the_cache_keeps_serving(family, tmp_path, monkeypatch):
    cache = ModelCache()
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 this is not a safetensors file")
    other = build_sdxl_pipeline(SDXLArch(block_out_channels=(8, 16, 24), head_dim=8, text_hidden=(16, 16),
                                         vae_channels=(8, 8, 8), image_size=32), build_tokenizer(TINY_WORDS))
    wrong = tmp_path / "wrong-arch.safetensors"
    save_file({k: v.contiguous() for k, v in other.unet.state_dict().items()}, wrong)
    pickled = tmp_path / "model.ckpt"
    torch.save({"x": torch.zeros(1)}, pickled)
    not_sdxl = tmp_path / "sd15"
    not_sdxl.mkdir()
    (not_sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    cases = [
        (ModelSpec("missing", str(tmp_path / "nope")), "does not exist"),
        (ModelSpec("corrupt", str(corrupt), base="tiny-base"), "not a valid .safetensors file"),
        (ModelSpec("wrong", str(wrong), base="tiny-base"), "do not match the expected architecture"),
        (ModelSpec("ghost", "nobody-here/no-such-model"), "not available"),
        (ModelSpec("pickled", str(pickled), base="tiny-base"), "STUDIO_ALLOW_PICKLE"),
        (ModelSpec("sd15", str(not_sdxl)), "not an SDXL-family pipeline"),
    ]
    for spec, message in cases:
        with pytest.raises(ModelLoadError) as info:
            cache.get(spec)
        assert message in str(info.value), (spec.name, str(info.value))
        assert spec.name in str(info.value)
    with pytest.raises(ModelLoadError, match="point the studio at a local copy"):
        cache.get(ModelSpec("ghost2", "nobody-here/no-such-model"))
    with pytest.raises(ValueError, match="unknown model 'nonsense'"):
        cache.get("nonsense")
    with pytest.raises(ValueError, match="outside the allowed folders"):
        cache.get(str(tmp_path / "nope"), roots=model_roots())
    assert image(cache.get("tiny-base")).shape == (32, 32, 3)  # still serving after every error


def test_resolve_spec_accepts_paths_inside_roots(family):
    spec = resolve_spec(str(family["base"]), roots=model_roots())
    assert spec.source == str(family["base"].resolve()) and spec.base is None
