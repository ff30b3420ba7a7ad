"""Loading: students hold only their own UNet, the hub path through an offline cache laid out like the real repos,
resolution of model arguments, memory estimates and eviction, component sharing, clear errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from studio.build import SDXLArch, build_sdxl_pipeline
from studio.generation import GenerateRequest, generate
from studio.hubcache import add_repo
from studio.loading import ModelCache, ModelLoadError, Runtime, component_fingerprint, resolve_spec
from studio.memory import module_bytes, safetensors_bytes
from studio.paths import ASSETS_DIR, model_roots, models_dir
from studio.registry import ModelSpec, get_spec, list_models
from studio.demo.tokenizer import build_tokenizer
from tests.conftest import TINY_WORDS, make_tiny_pipeline
from tests.studio.conftest import save_repo, tiny_repo_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
PARTS = ("text_encoder", "text_encoder_2", "vae")


def image(pipe, seed=1):
    return np.asarray(generate(pipe, GenerateRequest(prompt="a red circle", seed=seed, steps=2)).images[0])


def file_bytes(folder, dtype=torch.float32):
    """Bytes of the tensors in a component folder's plain (fp32) weight files."""
    return sum(safetensors_bytes(f, dtype) for f in folder.glob("*.safetensors") if ".fp16." not in f.name)


def buffers(*modules):
    """Non-persistent buffers (CLIP's position ids): resident, but not in the weight files."""
    return sum(b.numel() * b.element_size() for m in modules for name, b in m.named_buffers()
               if name.rsplit(".", 1)[-1] in m.get_submodule(name.rpartition(".")[0])._non_persistent_buffers_set)


def weights(pipe):
    return module_bytes([pipe.unet, *(getattr(pipe, p) for p in PARTS)])


def test_exported_models_join_the_registry(family):
    names = {s.name: s for s in list_models()}
    assert names["tiny-base"].base is None and names["tiny-student"].base == "tiny-base"
    assert {"sdxl", "ssd-1b", "vega"} <= set(names)
    assert get_spec("ssd-1b").base == "sdxl" and get_spec("vega").base == "sdxl"


def test_folder_load_matches_the_saved_pipeline(family, tiny_folder):
    pipe = ModelCache().get("tiny-base")
    assert np.array_equal(image(pipe), image(make_tiny_pipeline(seed=0)))


def test_a_student_alone_holds_its_unet_and_the_shared_parts_only():
    """demo-vega = its own UNet + the demo teacher's text encoders and VAE: resident bytes are exactly those files'
    tensors; the teacher's UNet is loaded only when the teacher itself is chosen, and then nothing else is."""
    demo = ASSETS_DIR / "demo"
    teacher_parts = sum(file_bytes(demo / "teacher" / p) for p in PARTS)
    vega_unet, teacher_unet = file_bytes(demo / "vega" / "unet"), file_bytes(demo / "teacher" / "unet")
    cache = ModelCache(runtime=Runtime(torch.device("cpu"), torch.float32))
    assert cache.estimate_bytes(get_spec("demo-vega")) == vega_unet + teacher_parts  # from headers, before loading
    vega = cache.get("demo-vega")
    extra = buffers(vega.text_encoder, vega.text_encoder_2)
    assert 0 < extra < 2048
    assert cache.memory_bytes() == vega_unet + teacher_parts + extra == cache.model_bytes("demo-vega")
    assert teacher_unet > extra  # (so the equality above excludes the teacher's UNet)
    assert cache.estimate_bytes(get_spec("demo-teacher")) == teacher_unet  # its parts are resident already
    teacher = cache.get("demo-teacher")
    assert all(getattr(teacher, p) is getattr(vega, p) for p in (*PARTS, "tokenizer", "tokenizer_2"))
    assert cache.memory_bytes() == vega_unet + teacher_parts + extra + teacher_unet


def test_hub_path_students_share_sdxl_parts_and_never_load_its_unet(hub):
    """Registry names -> hub ids -> the offline cache (plain fp32 files on a CPU): vega alone holds its UNet and
    SDXL's text encoders and VAE (the SDXL repo's UNet is there, unread); ssd-1b then adds only its UNet."""
    sdxl = hub / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots"
    sdxl = next(sdxl.iterdir())
    parts = sum(file_bytes(sdxl / p) for p in PARTS)
    vega_dir = next((hub / "models--segmind--Segmind-Vega" / "snapshots").iterdir())
    cache = ModelCache(runtime=Runtime(torch.device("cpu"), torch.float32))
    assert cache.estimate_bytes(get_spec("vega")) == file_bytes(vega_dir / "unet") + parts
    vega = cache.get("vega")
    parts += buffers(vega.text_encoder, vega.text_encoder_2)
    assert cache.memory_bytes() == module_bytes([vega.unet]) + parts == file_bytes(vega_dir / "unet") + parts
    assert sum(p.numel() for p in vega.unet.parameters()) < sum(
        p.numel() for p in tiny_repo_pipeline("sdxl").unet.parameters())
    ssd = cache.get("ssd-1b")
    assert ssd.text_encoder_2 is vega.text_encoder_2 and ssd.vae is vega.vae and ssd.unet is not vega.unet
    assert cache.memory_bytes() == module_bytes([vega.unet, ssd.unet]) + parts
    assert image(vega).shape == (32, 32, 3) and not np.array_equal(image(vega), image(ssd))


def test_bf16_reads_the_fp16_files_and_casts(tmp_path, monkeypatch):
    """The fp16 variant files hold other weights than the fp32 files here, so the test can tell which were read."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    fp16_weights = tiny_repo_pipeline("vega", seed=5)
    save_repo(tmp_path, get_spec("sdxl").source, tiny_repo_pipeline("sdxl"))
    save_repo(tmp_path, get_spec("vega").source, tiny_repo_pipeline("vega"), fp16_pipe=fp16_weights)
    expected = {k: v.to(torch.float16).to(torch.bfloat16) for k, v in fp16_weights.unet.state_dict().items()}
    unet = ModelCache(runtime=Runtime(torch.device("cpu"), torch.bfloat16)).get("vega").unet
    assert unet.dtype == torch.bfloat16
    assert all(torch.equal(v, expected[k]) for k, v in unet.state_dict().items())
    fp32 = ModelCache(runtime=Runtime(torch.device("cpu"), torch.float32)).get("vega").unet
    assert not torch.equal(next(iter(fp32.state_dict().values())).to(torch.bfloat16),
                           next(iter(expected.values())))


def test_model_arguments_resolve_registry_then_path_then_hub_id(hub, family, tmp_path):
    assert resolve_spec("vega") is not None and resolve_spec("vega").source == "segmind/Segmind-Vega"
    assert resolve_spec(str(ASSETS_DIR / "demo" / "vega")).name == "demo-vega"  # a registry model's own folder
    assert resolve_spec(str(family["base"])).name == "tiny-base"
    one, two = tmp_path / "a" / "my-unet", tmp_path / "b" / "my-unet"  # same folder name, two models
    for folder in (one, two):
        shutil.copytree(family["student"], folder)
    a, b = resolve_spec(str(one)), resolve_spec(str(two))
    assert a.name != b.name and a.name.startswith("my-unet-") and a.base == "tiny-base"
    # a hub id (owner/name) not in the registry and not a local path: loaded from the cache, command line only
    save_repo(hub, "someone/tiny-finetune", make_tiny_pipeline(seed=3))
    spec = resolve_spec("someone/tiny-finetune", hub_ids=True)
    assert spec.source == "someone/tiny-finetune" and spec.source_kind == "hub" and spec.base is None
    assert image(ModelCache().get(spec)).shape == (32, 32, 3)
    for kwargs in ({}, {"roots": model_roots(), "hub_ids": True}):  # the app's tabs: never a download
        with pytest.raises(ModelLoadError, match="hub ids are loaded from the command line only"):
            resolve_spec("someone/tiny-finetune", **kwargs)
    with pytest.raises(ModelLoadError, match="command line only"):
        ModelCache().get("someone/tiny-finetune")
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_spec("./no/such/folder")
    with pytest.raises(ValueError, match="unknown model 'nonsense'"):
        resolve_spec("nonsense")


def test_a_unet_folder_takes_its_base_from_studio_model_json_then_from_its_config(tmp_path):
    """Real configs, no weights needed: the UNet's text-feature width says which text encoders it needs."""
    configs = ASSETS_DIR / "configs"
    folder = tmp_path / "ssd-1b-unet-folder"
    folder.mkdir()
    shutil.copy(configs / "ssd-1b" / "unet" / "config.json", folder / "config.json")
    assert resolve_spec(str(folder)).base == "sdxl"  # 2048-wide cross-attention, 2816 added embedding: SDXL-class
    (folder / "studio_model.json").write_text(json.dumps({"base": "sdxl", "default_guidance": 9.0}))
    assert resolve_spec(str(folder)).default_guidance == 9.0
    # the README example that used to crash at step 1: an SDXL-class UNet on the demo teacher's 96-wide encoders
    (folder / "studio_model.json").write_text(json.dumps({"base": "demo-teacher"}))
    with pytest.raises(ModelLoadError, match="takes text features 2048 wide .*'demo-teacher' gives 128"):
        resolve_spec(str(folder))
    with pytest.raises(ModelLoadError, match="base 'ssd-1b' has no text encoders or VAE of its own"):
        resolve_spec(str(folder), base="ssd-1b")
    odd = tmp_path / "odd-unet"
    odd.mkdir()
    config = json.loads((configs / "vega" / "unet" / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 1024}))
    with pytest.raises(ModelLoadError, match=r"nothing says which model supplies them.*--base sdxl"):
        resolve_spec(str(odd))


def test_memory_estimate_is_what_loading_adds_and_eviction_makes_room_first(family):
    probe = ModelCache()
    for name in ("tiny-base", "tiny-student"):
        before, estimate = probe.memory_bytes(), probe.estimate_bytes(get_spec(name))
        pipe = probe.get(name)
        added = estimate + (buffers(pipe.text_encoder, pipe.text_encoder_2) if name == "tiny-base" else 0)
        assert probe.memory_bytes() - before == added and estimate > 0
    two = probe.memory_bytes()
    cache = ModelCache(budget_bytes=two)
    cache.get("tiny-base"), cache.get("tiny-student"), cache.get("tiny-base")  # touch base: student is LRU
    sibling = cache.get(str(family["sibling"]))  # one more UNet: over budget, the least recently used goes first
    assert cache.loaded() == ["tiny-base", resolve_spec(str(family["sibling"])).name]
    assert cache.memory_bytes() <= two and sibling.vae is cache.get("tiny-base").vae
    # working memory of the coming call counts: asking for room evicts even when the model is already loaded
    cache.get("tiny-base", workspace_bytes=two - cache.model_bytes("tiny-base"))
    assert cache.loaded() == ["tiny-base"]
    tiny = ModelCache(budget_bytes=1)
    tiny.get("tiny-base"), tiny.get(str(family["sibling"]))
    assert tiny.loaded() == [resolve_spec(str(family["sibling"])).name]  # the newest always stays


def test_components_are_shared_by_identity_of_config_sizes_and_headers_not_by_name(family, tmp_path):
    cache = ModelCache()
    a, b = cache.get(str(family["base"])), cache.get(str(family["sibling"]))
    assert a.text_encoder is b.text_encoder and a.vae is b.vae and a.unet is not b.unet
    # same config, same file sizes, same header; other weights: not shared
    other = tmp_path / "other-weights"
    pipe = make_tiny_pipeline(seed=0)
    pipe.vae = make_tiny_pipeline(seed=11).vae
    pipe.save_pretrained(other)
    assert component_fingerprint(other / "vae") != component_fingerprint(family["base"] / "vae")
    assert component_fingerprint(other / "text_encoder") == component_fingerprint(family["base"] / "text_encoder")
    c = cache.get(str(other))
    assert c.vae is not a.vae and c.text_encoder is a.text_encoder


def test_single_safetensors_unet_file(family):
    cache = ModelCache()
    file = models_dir() / "student-single.safetensors"
    folder_student = cache.get("tiny-student")
    save_file({k: v.contiguous() for k, v in folder_student.unet.state_dict().items()}, file)
    spec = resolve_spec(str(file))
    assert spec.base == "tiny-base"  # from the shapes in its header
    single = cache.get(spec)
    assert single.vae is folder_student.vae
    assert np.array_equal(image(single), image(folder_student))


def test_bad_sources_get_clear_errors_and_the_cache_keeps_serving(family, tmp_path):
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
    with pytest.raises(ModelLoadError, match="huggingface-cli download nobody-here/no-such-model"):
        cache.get(ModelSpec("ghost2", "nobody-here/no-such-model"))
    with pytest.raises(ModelLoadError, match="stabilityai/stable-diffusion-xl-base-1.0 .*not in the local Hugging Face cache"):
        cache.get("ssd-1b")  # no hub cache in this test: the message names the repo that is missing
    with pytest.raises(ValueError, match="unknown model 'nonsense'"):
        cache.get("nonsense")
    with pytest.raises(ValueError, match="outside the allowed folders"):
        cache.get(str(tmp_path / "nope"), roots=model_roots())
    assert cache.loaded() == [] and cache.memory_bytes() == 0  # nothing half-loaded stays behind
    assert image(cache.get("tiny-base")).shape == (32, 32, 3)  # still serving after every error


def test_resolve_spec_accepts_paths_inside_roots(family):
    spec = resolve_spec(str(family["base"]), roots=model_roots())
    assert spec.source == str(family["base"].resolve()) and spec.base is None


def test_add_repo_lays_out_the_hub_cache(tmp_path):
    folder = tmp_path / "repo"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    snapshot = add_repo(tmp_path / "cache", "owner/name", folder)
    repo = tmp_path / "cache" / "models--owner--name"
    assert (repo / "refs" / "main").read_text() == snapshot.name
    link = snapshot / "unet" / "config.json"
    assert link.is_symlink() and link.resolve().parent == (repo / "blobs").resolve() and link.read_text() == "{}"
