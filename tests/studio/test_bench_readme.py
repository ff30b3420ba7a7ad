"""The README's speed tables come from the committed reports (never typed by hand); the UI's notes read several
reports; a time-boxed options bench says how many prompts it timed; the GPU recipe is valid bash."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studio.bench import readme
from studio.bench.notes import BENCH_DIR, option_notes
from studio.bench.options import bench_options
from studio.loading import ModelCache

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_readme_blocks_are_what_the_committed_reports_say(tmp_path):
    unet = json.loads((BENCH_DIR / "unet-256-fp32-r7.json").read_text())
    blocks = readme.blocks()
    assert set(blocks) == {"goals", "unet", "family", "options", "reuse", "profile"}
    table = "\n".join(blocks["unet"])
    for name in ("sdxl", "ssd-1b", "vega"):
        assert f"**{unet['ratios'][name]:.3f}**" in table
    assert unet["command"] in table and str(unet["environment_before"]["load_average"][0]) in table
    goals = "\n".join(blocks["goals"])
    assert f"| {unet['ratios']['vega']:.3f} (medians)" in goals
    assert ("| met" if unet["ratios"]["vega"] <= 0.5 else "**not met**") in goals.split("vega/SDXL")[1].split("\n")[0]
    fastest = readme.min_ratios(unet)
    assert fastest["sdxl"] == 1.0 and fastest["vega"] == min(unet["models"]["vega"]["runs_s"]) / min(
        unet["models"]["sdxl"]["runs_s"])
    text = "intro\n" + "\n".join(f"{readme.START.format(n)}\nold\n{readme.END}" for n in blocks) + "\noutro\n"
    file = tmp_path / "README.md"
    file.write_text(text)
    assert readme.write_readme(file) == list(blocks)
    written = file.read_text()
    assert written.startswith("intro\n") and written.endswith("outro\n") and "\nold\n" not in written
    assert readme.write_readme(file) and file.read_text() == written  # idempotent
    with pytest.raises(ValueError, match="no '<!-- speed:unet"):
        readme.replace_block("no blocks here", "unet", ["x"])


def test_the_repository_readme_holds_the_current_tables():
    text = readme.README.read_text()
    for name, lines in readme.blocks().items():
        assert "\n".join([readme.START.format(name), *lines, readme.END]) in text, \
            f"README block {name} is stale: run python -m studio bench readme"


def test_notes_read_every_report_given_and_skip_missing_ones(tmp_path):
    report = {"command": "python -m studio bench options --model demo-teacher --option fuse_qkv", "prompts": 2,
              "models": ["demo-teacher"], "device": "cpu",
              "environment_before": {"torch_threads": 1, "load_average": [1.5, 1, 1]},
              "results": {"demo-teacher": {"fuse_qkv=true": {
                  "speedup": 1.25, "quality": {"identical_images": 0, "ssim_mean": 0.999}}}}}
    (tmp_path / "a.json").write_text(json.dumps(report))
    notes = option_notes(tmp_path / "a.json", tmp_path / "missing.json")
    assert notes["fuse_qkv"] == "measured on demo-teacher: true: 1.25× the default's speed, SSIM 0.999"
    assert "load 1.5" in notes["source"] and "feature_reuse" not in notes
    assert option_notes(tmp_path / "missing.json")["source"] == "No committed bench report found."


def test_a_time_boxed_options_bench_reports_the_prompts_it_timed(family):
    r = bench_options(ModelCache(), ["tiny-base"], ["fuse_qkv"], prompts=3, steps=1, max_minutes=1e-9)
    assert (r["prompts"], r["prompts_asked"]) == (1, 3)  # the first prompt always runs
    assert all(row["latency"]["n"] == 1 for row in r["results"]["tiny-base"].values())
    with pytest.raises(ValueError, match="max_minutes must be a positive number"):
        bench_options(ModelCache(), ["tiny-base"], prompts=1, max_minutes=0)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_gpu_recipe_is_valid_bash_and_refuses_a_cpu_without_allow_cpu(tmp_path):
    script = ROOT / "scripts" / "gpu_bench.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "set -euo pipefail" in text and "--model sdxl --model ssd-1b --model vega" in text
    if not torch.cuda.is_available():  # the python on PATH is this one: its packages are there, nothing installs
        done = subprocess.run(["bash", str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "WORK": str(tmp_path)})
        assert done.returncode != 0 and "gpu_bench: no CUDA device" in done.stderr
