"""Shared fixtures: tiny SDXL-architecture pipelines built from configs and saved to disk, an isolated data dir."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

os.environ.setdefault("STUDIO_DATA_DIR", tempfile.mkdtemp(prefix="studio-test-data-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from studio.build import SDXLArch, build_sdxl_pipeline  # noqa: E402
from studio.demo.tokenizer import build_tokenizer  # noqa: E402

torch.set_num_threads(2)
TINY_ARCH = SDXLArch(block_out_channels=(8, 16, 16), head_dim=8, text_hidden=(16, 16), text_layers=(1, 1),
                     projection_dim=16, addition_time_embed_dim=4, vae_channels=(8, 8, 8), image_size=32)
TINY_WORDS = "a red green blue circle square star on background".split()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; run with RUN_SLOW=1")
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


def pytest_sessionfinish(session, exitstatus):
    """Training jobs run in their own sessions (they outlive an app restart by design), so a test that fails or is
    interrupted before it cancels its job would leave the job training on; end every process the run started with a
    config under the suite's data or temporary folders."""
    import psutil

    roots = [os.environ["STUDIO_DATA_DIR"]]
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        roots.append(str(factory.getbasetemp()))
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if proc.pid != os.getpid() and "-m training." in cmdline and any(root in cmdline for root in roots):
            proc.terminate()
            leftovers.append(proc)
    psutil.wait_procs(leftovers, timeout=10)


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow test: set RUN_SLOW=1")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and os.environ.get("RUN_SLOW") != "1":
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """Toy-size forwards: one thread is fastest, and immune to oversubscription on a busy 2-core box
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tiny_pipeline(seed: int = 0):
    return build_sdxl_pipeline(TINY_ARCH, build_tokenizer(TINY_WORDS), seed=seed)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny SDXL-layout pipeline saved with save_pretrained (safetensors)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-sdxl"
    make_tiny_pipeline(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_student_folder(tmp_path_factory):
    """Same text encoders/VAE as tiny_folder (seed 0), a different UNet (seed 7): a sibling model."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-sibling"
    pipe = make_tiny_pipeline(seed=0)
    pipe.unet = make_tiny_pipeline(seed=7).unet
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def family(tiny_folder, tiny_student_folder):
    """Exported models in the models dir: a full base pipeline and a UNet-only student naming it as base."""
    from studio.paths import models_dir

    root = models_dir()
    base = root / "tiny-base"
    if not base.exists():
        shutil.copytree(tiny_folder, base)
    student = root / "tiny-student"
    if not student.exists():
        shutil.copytree(tiny_student_folder / "unet", student / "unet")
        (student / "studio_model.json").write_text(json.dumps({"base": "tiny-base", "description": "test"}))
    return {"base": base, "student": student, "sibling": tiny_student_folder}
