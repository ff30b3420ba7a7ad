"""The benchmark commands in tiny configurations: structure and sanity of their reports (every ratio recomputed from
the medians it came from, shared storage really shared, the shared load equal to three UNets and one text-encoder/VAE
set), not timings. The committed reports the README and the UI quote are checked for what they must contain."""
import json
import statistics
from dataclasses import replace

import pytest

from studio.bench.family import bench_memory, bench_side_by_side, run_real
from studio.bench.notes import BENCH_DIR, option_notes
from studio.bench.options import bench_options, parse_option, reuse_bound
from studio.bench.stats import rotated, storage_bytes, summary
from studio.bench.unet import bench_unet, family_unets
from studio.build import unet_config
from studio.cli import main
from studio.generation import GenerateRequest
from studio.loading import ModelCache
from studio.recipes import recipe_plan
from studio.removal import student_config
from tests.conftest import TINY_ARCH
from tests.studio.test_smoke import tiny_configs  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_family_configs():
    """A tiny SDXL-layout teacher and its SSD-1B and Vega recipe students (what the released configs are to SDXL)."""
    teacher = unet_config(replace(TINY_ARCH, transformer_layers_per_block=(1, 2, 10)))
    return {"sdxl": teacher, **{n: student_config(teacher, recipe_plan(n, teacher)) for n in ("ssd-1b", "vega")}}


def test_rotation_and_summary():
    assert [rotated(["a", "b", "c"], i) for i in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                                ["a", "b", "c"]]
    s = summary([4.0, 1.0, 2.0, 3.0])
    assert (s["median_s"], s["min_s"], s["max_s"], s["p25_s"], s["p75_s"]) == (2.5, 1.0, 4.0, 1.75, 3.25)
    assert s["spread"] == pytest.approx(1.5 / 2.5)
    with pytest.raises(ValueError):
        summary([])


def test_unet_bench_shares_the_teachers_storage_and_its_ratios_are_its_medians(tiny_family_configs):
    import torch

    unets = family_unets(tiny_family_configs, torch.float32, torch.device("cpu"))
    assert storage_bytes(unets.values()) == storage_bytes([unets["sdxl"]])  # one allocation for all three
    teacher = {p.data_ptr() for p in unets["sdxl"].parameters()}
    assert all(p.data_ptr() in teacher for n in ("ssd-1b", "vega") for p in unets[n].parameters())
    r = bench_unet(tiny_family_configs, resolution=64, repeats=3, warmup=1, threads=1)
    assert list(r["ratios"]) == ["sdxl", "ssd-1b", "vega"] and r["ratios"]["sdxl"] == 1.0
    for name, m in r["models"].items():
        assert len(m["runs_s"]) == 3 and m["median_s"] == statistics.median(m["runs_s"])
        assert r["ratios"][name] == m["median_s"] / r["models"]["sdxl"]["median_s"]
    assert r["models"]["vega"]["params"] < r["models"]["ssd-1b"]["params"] < r["models"]["sdxl"]["params"]
    assert 0 < r["mac_ratios"]["vega"] < r["mac_ratios"]["ssd-1b"] < 1
    assert r["weight_bytes_allocated"] < r["weight_bytes_if_separate"]
    with pytest.raises(ValueError, match="resolution must be a multiple of 64"):
        bench_unet(tiny_family_configs, resolution=100)
    with pytest.raises(ValueError, match="dtype must be one of"):
        bench_unet(tiny_family_configs, dtype="int8")


def test_bench_unet_command_prints_the_json_last_and_writes_it(tiny_family_configs, tmp_path, capsys):
    configs = tmp_path / "configs"
    for name, cfg in tiny_family_configs.items():
        (configs / name / "unet").mkdir(parents=True)
        (configs / name / "unet" / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "unet.json"
    args = ["bench", "unet", "--resolution", "64", "--repeats", "2", "--threads", "1", "--configs", str(configs),
            "--json", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{"):])  # the table first, the JSON last
    assert report["resolution"] == 64 and set(report["ratios"]) == {"sdxl", "ssd-1b", "vega"}
    assert json.loads(out.read_text()) == report and report["command"].startswith("python -m studio bench unet")
    assert main(["bench", "unet", "--resolution", "64", "--configs", str(tmp_path / "nowhere")]) == 2


def test_memory_bench_shared_load_is_the_unets_plus_one_set_and_separate_loads_hold_more(family):
    r = bench_memory(["tiny-base", "tiny-student"])
    files = r["files"]
    assert r["ideal_bytes"] == files["tiny-base"]["unet"] + files["tiny-student"]["unet"] + sum(
        files["tiny-base"][p] for p in ("text_encoder", "text_encoder_2", "vae"))
    assert r["shared"]["text_encoder_vae_sets"] == 1
    assert r["ratio_shared_to_ideal"] == r["shared"]["bytes"] / r["ideal_bytes"]
    assert 1.0 <= r["ratio_shared_to_ideal"] < 1.01  # only non-persistent buffers (position ids) are not in files
    assert r["separate_total_bytes"] == sum(r["separate_bytes"].values()) > r["shared"]["bytes"]
    assert r["shared"]["storage_bytes"] <= r["shared"]["bytes"]


def test_side_by_side_bench_ratio_is_the_run_over_the_sum_of_single_runs(family):
    request = GenerateRequest(prompt="a red star", seed=1, steps=1)
    r = bench_side_by_side(["tiny-base", "tiny-student"], request, repeats=2, warmup=1)
    times = r["times"]
    assert set(times) == {"tiny-base+tiny-student", "tiny-base", "tiny-student"}
    assert r["sum_of_single_medians_s"] == times["tiny-base"]["median_s"] + times["tiny-student"]["median_s"]
    assert r["ratio"] == times["tiny-base+tiny-student"]["median_s"] / r["sum_of_single_medians_s"]
    assert all(t["n"] == 2 for t in times.values()) and 0.3 < r["ratio"] < 3


def test_memory_and_side_by_side_on_the_real_layout_through_an_offline_cache(tiny_configs, tmp_path):  # noqa: F811
    """The --real path (smoke cache, child process with HF_HUB_CACHE) on shrunken configs of the real repos."""
    memory = run_real("memory", tmp_path, "fp32", [], configs=tiny_configs, log=lambda *_: None)
    assert memory["models"] == ["sdxl", "ssd-1b", "vega"] and memory["shared"]["text_encoder_vae_sets"] == 1
    assert 1.0 <= memory["ratio_shared_to_ideal"] < 1.01 and memory["ratio_separate_to_shared"] > 1.5
    side = run_real("side-by-side", tmp_path, "fp32", ["--size", "64", "--steps", "1", "--repeats", "1"],
                    configs=tiny_configs, log=lambda *_: None)
    assert side["ratio"] == side["times"]["sdxl+ssd-1b+vega"]["median_s"] / side["sum_of_single_medians_s"]


def test_options_bench_reports_speed_ups_from_its_medians_and_says_why_it_skipped(family):
    cache = ModelCache()
    r = bench_options(cache, ["tiny-base"], ["feature_reuse=2", "fuse_qkv", "low_vram", "vae=taesdxl"], prompts=2,
                      steps=2)
    rows = r["results"]["tiny-base"]
    assert list(rows) == ["default", "feature_reuse=2", "fuse_qkv=true"] and not r["scored"]
    default = rows["default"]
    assert default["quality"]["identical_images"] == 2 and default["speedup"] == 1.0
    for row in rows.values():
        assert row["speedup"] == default["latency"]["median_s"] / row["latency"]["median_s"]
        assert row["latency"]["n"] == 2 and row["warmup_s"] > 0
    assert rows["feature_reuse=2"]["reuse_bound"] == reuse_bound(
        r["profile"]["tiny-base"]["shares"]["unet_deep_part"], 2)
    assert "only with a CUDA GPU" in r["skipped"]["tiny-base"]["low_vram=true"]
    assert "no tiny VAE exists for it" in r["skipped"]["tiny-base"]["vae=taesdxl"]
    shares = r["profile"]["tiny-base"]["shares"]
    assert 0 < shares["unet_deep_part"] < shares["unet"] < 1 and sum(
        shares[k] for k in ("text_encoders", "unet", "vae_decode", "other")) == pytest.approx(1)
    assert cache.compile == "off" and not cache.offload  # the bench leaves the cache in its default modes


def test_options_bench_scores_the_demo_family_with_the_evaluator(tmp_path, capsys):
    out = tmp_path / "options.json"
    assert main(["bench", "options", "--model", "demo-vega", "--option", "feature_reuse=3", "--prompts", "2",
                 "--steps", "3", "--threads", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    rows = r["results"]["demo-vega"]
    assert r["scored"] and set(rows["default"]["quality"]["evaluator"]) == {"background", "colour", "shape", "all"}
    drop = rows["default"]["quality"]["evaluator"]["all"] - rows["feature_reuse=3"]["quality"]["evaluator"]["all"]
    assert rows["feature_reuse=3"]["evaluator_drop_points"] == pytest.approx(100 * drop)
    assert "feature_reuse=3" in capsys.readouterr().out  # the table
    notes = option_notes(out, tmp_path / "missing.json")
    assert "3: " in notes["feature_reuse"] and "× the default's speed" in notes["feature_reuse"]
    assert "bench options --model demo-vega" in notes["source"]


def test_bad_options_are_refused_by_name():
    assert parse_option("compile=full,feature_reuse=3") == {"compile": "full", "feature_reuse": 3}
    assert parse_option("channels_last") == {"channels_last": True}
    with pytest.raises(ValueError, match="unknown speed option 'turbo'"):
        parse_option("turbo")
    with pytest.raises(ValueError, match="option feature_reuse takes an integer"):
        parse_option("feature_reuse=fast")
    with pytest.raises(ValueError, match="compile must be one of"):
        parse_option("compile=max")
    with pytest.raises(ValueError, match="feature_reuse .* from 1"):
        parse_option("feature_reuse=50")


def test_the_committed_reports_quote_every_option_with_its_command():
    """The README and the Generate tab quote these files; each number has the command that produced it."""
    notes = option_notes()
    for field in ("attention", "channels_last", "fuse_qkv", "vae_decode", "vae", "compile", "feature_reuse",
                  "low_vram"):
        assert field in notes, field
    assert "python -m studio bench options" in notes["source"]
    for name in ("unet-256-fp32-r7.json", "memory-demo.json", "side-by-side-demo.json"):
        report = json.loads((BENCH_DIR / name).read_text())
        assert report["command"].startswith("python -m studio bench ")
        assert "load_average" in report["environment_before"]
