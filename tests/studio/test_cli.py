"""CLI: models listing, side-by-side generation to PNG files, clear errors with exit code 2."""
import json
import re
import subprocess
import sys

import pytest

from studio.cli import main
from studio.paths import REPO_ROOT
from studio.pngmeta import read_png

pytestmark = pytest.mark.usefixtures("one_thread")


def test_models_lists_the_registry_as_json(family, capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["sdxl"]["unet_params"] == 2_567_463_684 and rows["ssd-1b"]["base"] == "sdxl"
    assert rows["tiny-base"]["offline"] is True and rows["tiny-base"]["unet_params"] > 0
    assert rows["tiny-student"]["base"] == "tiny-base"


def test_generate_writes_pngs_for_each_model(family, tmp_path, capsys):
    code = main(["generate", "--model", "tiny-base", "--model", "tiny-student", "--prompt", "a red star",
                 "--steps", "2", "--seed", "3", "--scheduler", "DDIM", "--out", str(tmp_path)])
    assert code == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert [re.sub(r"-[0-9a-f]{8}\.png$", ".png", p.name) for p in pngs] == ["tiny-base-3.png", "tiny-student-3.png"]
    params, meta = read_png(pngs[1])
    assert params["Sampler"] == "DDIM" and params["Model"] == "tiny-student" and meta["steps"] == 2
    stats = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert [s["model"] for s in stats] == ["tiny-base", "tiny-student"]


def test_bad_input_exits_2_with_a_clear_message(family, tmp_path, capsys):
    assert main(["generate", "--model", "tiny-base", "--prompt", "x", "--width", "33", "--out", str(tmp_path)]) == 2
    assert "width must be a multiple of 8" in capsys.readouterr().err
    assert main(["generate", "--model", "no-such-model", "--prompt", "x", "--out", str(tmp_path)]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "studio", "generate", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--negative-prompt" in out.stdout and "DPM++ 2M Karras" in out.stdout


def test_bench_reports_the_latencies_it_measured(family, capsys):
    """Every number in a bench row comes from the runs' own latencies (reported per run as they finish): medians
    and minima of the timed runs only, speed-up = first model's median / this model's median."""
    from statistics import median

    from studio.bench import bench_generate
    from studio.generation import GenerateRequest
    from studio.loading import ModelCache

    runs = []
    rows = bench_generate(ModelCache(), ["tiny-base", "tiny-student"], GenerateRequest(prompt="a red star", steps=2),
                          repeats=2, warmup=1, on_step=lambda s, t, info: runs.append(info))
    assert [(r["model"], r["timed"]) for r in runs] == [("tiny-base", False), ("tiny-student", False)] + [
        ("tiny-base", True), ("tiny-student", True)] * 2
    timed = {m: [r["latency_s"] for r in runs if r["model"] == m and r["timed"]] for m in ("tiny-base", "tiny-student")}
    assert [r["model"] for r in rows] == ["tiny-base", "tiny-student"]
    for row in rows:
        assert row["median latency (s)"] == round(median(timed[row["model"]]), 4)
        assert row["min (s)"] == round(min(timed[row["model"]]), 4)
        assert row["speed-up vs first"] == round(median(timed["tiny-base"]) / median(timed[row["model"]]), 2)
    assert main(["bench", "--model", "tiny-base", "--steps", "1", "--repeats", "1", "--warmup", "0", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["model"] == "tiny-base" and row["weights (MB)"] > 0 and row["speed-up vs first"] == 1.0


def test_readme_unet_folder_example_and_hub_ids(hub, tmp_path, capsys):
    """`--model /path/to/unet-folder` with studio_model.json naming sdxl works; without anything naming the base it
    fails with a message naming --base (and works with --base); `--model owner/name` is a hub id."""
    import shutil

    from tests.conftest import make_tiny_pipeline
    from tests.studio.conftest import save_repo

    vega_repo = next((hub / "models--segmind--Segmind-Vega" / "snapshots").iterdir())
    folder = tmp_path / "vega-unet-folder"
    folder.mkdir()
    for file in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(vega_repo / "unet" / file, folder / file)
    (folder / "studio_model.json").write_text(json.dumps({"base": "sdxl"}))
    out = tmp_path / "out"
    args = ["generate", "--prompt", "a red star", "--steps", "2", "--seed", "1", "--out", str(out)]
    assert main(args + ["--model", str(folder)]) == 0
    (png,) = out.glob("vega-unet-folder-*-1-*.png")
    assert read_png(png)[0]["Model"].startswith("vega-unet-folder-")
    (folder / "studio_model.json").unlink()
    odd = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**odd, "cross_attention_dim": 24}))
    capsys.readouterr()
    assert main(args + ["--model", str(folder)]) == 2
    assert "--base sdxl" in capsys.readouterr().err
    (folder / "config.json").write_text(json.dumps(odd))
    assert main(args + ["--model", str(folder), "--base", "sdxl"]) == 0
    save_repo(hub, "someone/tiny-finetune", make_tiny_pipeline(seed=3))
    assert main(args + ["--model", "someone/tiny-finetune"]) == 0
    assert list(out.glob("someone-tiny-finetune-1-*.png"))


def test_a_failing_model_exits_1_and_the_others_are_written(family, tmp_path, capsys):
    code = main(["generate", "--model", "tiny-base", "--model", "vega", "--prompt", "x", "--steps", "1",
                 "--seed", "2", "--out", str(tmp_path)])
    assert code == 1 and [p.name[:-13] for p in tmp_path.glob("*.png")] == ["tiny-base-2"]
    assert "error: vega:" in capsys.readouterr().err


def test_generate_with_speed_options_and_bad_values_exit_2(family, tmp_path, capsys):
    code = main(["generate", "--model", "tiny-base", "--prompt", "a red star", "--steps", "4", "--seed", "2",
                 "--feature-reuse", "2", "--channels-last", "--fuse-qkv", "--vae-decode", "full",
                 "--out", str(tmp_path)])
    assert code == 0
    (png,) = tmp_path.glob("tiny-base-2-*.png")  # <model>-<seed>-<settings hash>.png
    params, meta = read_png(png)
    assert params["Feature reuse"] == "2 (branch 0)" and meta["channels_last"] is True and meta["fuse_qkv"] is True
    capsys.readouterr()
    assert main(["generate", "--model", "tiny-base", "--prompt", "x", "--feature-reuse", "0",
                 "--out", str(tmp_path)]) == 2
    assert "feature_reuse (the reuse interval) must be an integer from 1 (off) to 10" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-base", "--prompt", "x", "--attention", "flash",
                 "--out", str(tmp_path)]) == 2
    assert "attention must be one of: sdpa, classic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", "tiny-base", "--prompt", "x", "--compile", "max"])
    assert "invalid choice: 'max'" in capsys.readouterr().err
