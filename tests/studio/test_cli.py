"""CLI: models listing, side-by-side generation to PNG files, clear errors with exit code 2."""
import json
import subprocess
import sys

from studio.cli import main
from studio.paths import REPO_ROOT
from studio.pngmeta import read_png


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
    assert [p.name for p in pngs] == ["tiny-base-3.png", "tiny-student-3.png"]
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


def test_bench_prints_side_by_side_ratios(family, capsys):
    assert main(["bench", "--model", "tiny-base", "--model", "tiny-student", "--steps", "2", "--repeats", "2",
                 "--warmup", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["tiny-base", "tiny-student"]
    assert rows[0]["speed-up vs first"] == 1.0 and rows[1]["speed-up vs first"] > 0
    assert rows[0]["min (s)"] <= rows[0]["median latency (s)"]
