"""The README's speed tables, written from the committed bench reports (``assets/bench/*.json``), never typed by hand.

    python -m studio bench readme            # rewrites the <!-- speed:NAME ... --> blocks of README.md

Each block holds a table and, under it, the command that produced the numbers and the machine's load average while it
ran. A report that is not there leaves its block saying so. Text outside the blocks is left alone.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from studio.bench.notes import BENCH_DIR
from studio.paths import ASSETS_DIR

README = ASSETS_DIR.parent / "README.md"
UNET_REPORTS = ("unet-256-fp32-r7.json",)  # scripts/bench_cpu.sh
START = "<!-- speed:{} (python -m studio bench readme writes this block) -->"
END = "<!-- /speed -->"


def _read(name: str) -> dict | None:
    path = BENCH_DIR / name
    return json.loads(path.read_text()) if path.is_file() else None


def _conditions(r: dict) -> str:
    before, after = r["environment_before"], r["environment_after"]
    return (f"`{r['command']}` — {before['torch_threads']} torch thread(s), torch {before['torch']}, "
            f"{before['time']}; 1-minute load average {before['load_average'][0]} → {after['load_average'][0]} "
            f"(the 2-core machine is shared: absolute times grow with the load, ratios measured in turn are steadier)")


def min_ratios(r: dict) -> dict[str, float]:
    """Each model's fastest repeat over the teacher's: interference from other work only adds time, so on a shared
    machine the minimum is the least disturbed estimate (the ``ratios`` of the report are of medians)."""
    teacher = min(r["models"]["sdxl"]["runs_s"])
    return {n: min(m["runs_s"]) / teacher for n, m in r["models"].items()}


def unet_block(r: dict) -> list[str]:
    lines = ["| model | UNet params | GMACs per forward | median s | p25–p75 s | latency / SDXL (medians) | "
             "min s | latency / SDXL (minima) | MACs / SDXL |", "|---|---|---|---|---|---|---|---|---|"]
    fastest = min_ratios(r)
    for name, m in r["models"].items():
        lines.append(f"| {name} | {m['params']:,} | {m['macs'] / 1e9:.1f} | {m['median_s']:.3f} | "
                     f"{m['p25_s']:.3f}–{m['p75_s']:.3f} | **{r['ratios'][name]:.3f}** | {m['min_s']:.3f} | "
                     f"{fastest[name]:.3f} | {r['mac_ratios'][name]:.3f} |")
    return lines + ["", f"{r['resolution']}² px (latent {r['latent']}²), batch {r['batch']}, {r['dtype']} on "
                        f"{r['device']}, {r['repeats']} interleaved repeats after {r['warmup']} warm-up: "
                        + _conditions(r)]


def family_block(memory: dict | None, side: dict | None) -> list[str]:
    lines = []
    if memory:
        mb = 2 ** 20
        lines += [f"- Memory, {' + '.join(memory['models'])} ({memory['dtype']}): loaded together "
                  f"{memory['shared']['bytes'] / mb:.1f} MiB = **{memory['ratio_shared_to_ideal']:.4f}×** the three "
                  f"UNets + one text-encoder/VAE set ({memory['ideal_bytes'] / mb:.1f} MiB from the safetensors "
                  f"headers; goal ≤ 1.05); loaded separately they would hold {memory['separate_total_bytes'] / mb:.1f}"
                  f" MiB ({memory['ratio_separate_to_shared']:.2f}×). " + _conditions(memory)]
    if side:
        t = side["times"]
        together = "+".join(side["models"])
        lines += [f"- Side by side, {side['request']['steps']} steps: the three-model run takes "
                  f"{t[together]['median_s']:.3f} s, the three single runs {side['sum_of_single_medians_s']:.3f} s "
                  f"together → **{side['ratio']:.3f}×** (paired per repeat: median {side['paired_ratio']['median_s']:.3f};"
                  f" goal ≤ 1.05), {side['repeats']} repeats. " + _conditions(side)]
    return lines or ["(no family report committed yet)"]


def options_block(reports: list[dict]) -> list[str]:
    lines = ["| model | option | median s | speed-up | SSIM | PSNR dB | evaluator (all correct) | drop, points | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for n, r in enumerate(reports, 1):
        for model, rows in r["results"].items():
            for label, row in rows.items():
                q = row["quality"]
                ev = q.get("evaluator", {}).get("all")
                note = [f"[{n}]"]
                if "compile_s" in row and "feature_reuse" in row["options"]:  # after a compile row: code reused
                    note.append("compiled code reused (its compile time is in the rows above)")
                elif "compile_s" in row:
                    note.append(f"compile {row['compile_s']:.0f} s (pays back after "
                                f"{_payback(row, rows['default']):s})")
                if "reuse_bound" in row:
                    note.append(f"Amdahl bound {row['reuse_bound']:.2f}×")
                if q["identical_images"]:
                    note.append(f"{q['identical_images']}/{r['prompts']} images identical")
                psnr = "∞" if q["psnr_db_mean"] is None else f"{q['psnr_db_mean']:.1f}"
                score = "" if ev is None else f"{100 * ev:.1f} %"
                drop = row.get("evaluator_drop_points")
                lines.append(f"| {model} | {label} | {row['latency']['median_s']:.3f} | {row['speedup']:.2f}× | "
                             f"{q['ssim_mean']:.3f} | {psnr} | {score} | {'' if drop is None else f'{drop:.1f}'} | "
                             f"{'; '.join(note)} |")
        for model, skipped in r.get("skipped", {}).items():
            for label, reason in skipped.items():
                lines.append(f"| {model} | {label} | — | — | — | — | — | — | [{n}] not measured: {reason} |")
        asked = r.get("prompts_asked", r["prompts"])
        cut = f" of {asked} asked: the --max-minutes budget ran out" if asked > r["prompts"] else ""
        notes.append(f"[{n}] {r['prompts']} prompts ({r['prompt_set']}, one seed each{cut}), {r['request']['steps']} "
                     f"{r['request']['scheduler']} steps, CFG {r['request']['guidance']:g}, {r['dtype']} on "
                     f"{r['device']}: " + _conditions(r))
    if not notes:
        return ["(no options report committed yet)"]
    return lines + [""] + [f"{n}  " for n in notes[:-1]] + notes[-1:]  # two spaces: a Markdown line break


def _payback(row: dict, default: dict) -> str:
    saved = default["latency"]["median_s"] - row["latency"]["median_s"]
    if saved <= 0:
        return "never: it is not faster here"
    return f"{row['compile_s'] / saved:.0f} images"


def profile_block(reports: list[dict]) -> list[str]:
    lines = ["| model | seconds per image | text encoders | UNet | UNet deep part (skipped on a reused step) | "
             "VAE decode | rest |", "|---|---|---|---|---|---|---|"]
    for model, p in ((m, p) for r in reports for m, p in r["profile"].items()):
        s = p["shares"]
        lines.append(f"| {model} | {p['seconds']['total']:.3f} | {s['text_encoders']:.1%} | {s['unet']:.1%} | "
                     f"{s['unet_deep_part']:.1%} | {s['vae_decode']:.1%} | {s['other']:.1%} |")
    return lines


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def goals_block(unet: list[tuple[str, dict]], memory: dict | None, side: dict | None, reuse: dict | None,
                compiled: dict | None) -> list[str]:
    """Issue 18's goals, each with the measured value and the report it comes from."""
    lines = ["| goal | measured | verdict | report |", "|---|---|---|---|"]
    for file, run in unet or []:
        fastest = min_ratios(run)
        for name, goal in (("ssd-1b", 0.62), ("vega", 0.50)):
            ratio = run["ratios"][name]
            lines.append(f"| {name}/SDXL UNet forward ≤ {goal} (256², {run['dtype']}, "
                         f"{run['environment_before']['torch_threads']} threads) | {ratio:.3f} (medians); "
                         f"{fastest[name]:.3f} (minima); load {run['environment_before']['load_average'][0]} → "
                         f"{run['environment_after']['load_average'][0]} | {_verdict(ratio <= goal)} (medians) | "
                         f"`assets/bench/{file}` |")
    if memory:
        lines.append(f"| shared-component memory ≤ 1.05× | {memory['ratio_shared_to_ideal']:.4f}× | "
                     f"{_verdict(memory['ratio_shared_to_ideal'] <= 1.05)} | `assets/bench/memory-demo.json` |")
    if side:
        lines.append(f"| three-model run ≤ 1.05× three single runs | {side['ratio']:.3f}× (paired "
                     f"{side['paired_ratio']['median_s']:.3f}×) | {_verdict(side['ratio'] <= 1.05)} | "
                     "`assets/bench/side-by-side-demo.json` |")
    if reuse:
        model = reuse["models"][0]
        rows = {k: v for k, v in reuse["results"][model].items() if k.startswith("feature_reuse=")}
        fine = {k: v for k, v in rows.items() if v.get("evaluator_drop_points", 99) <= 3}
        best = max(fine.items(), key=lambda kv: kv[1]["speedup"], default=None)
        text = (f"{best[0]}: {best[1]['speedup']:.2f}× at {best[1]['evaluator_drop_points']:.1f} points"
                if best else "no interval within 3 points")
        lines.append(f"| feature reuse on {model}: ≥ 1.8× at an evaluator drop ≤ 3 points | {text} "
                     f"({reuse['prompts']} prompts) | {_verdict(bool(best) and best[1]['speedup'] >= 1.8)} | "
                     "`assets/bench/feature-reuse-demo.json` |")
    if compiled:
        model = compiled["models"][0]
        for label, row in compiled["results"][model].items():
            if "compile_s" in row and "feature_reuse" not in row["options"]:  # combined: compiled code reused
                lines.append(f"| torch.compile ({label}) on {model}: report speed-up and compile time; off by "
                             f"default unless it pays within one image | {row['speedup']:.2f}×, compile "
                             f"{row['compile_s']:.0f} s, pays back after "
                             f"{_payback(row, compiled['results'][model]['default'])} | off by default | "
                             "`assets/bench/compile-demo-teacher.json` |")
    return lines


def blocks() -> dict[str, list[str]]:
    unet = [(n, r) for n, r in ((n, _read(n)) for n in UNET_REPORTS) if r]
    options = [r for r in (_read(n) for n in ("options-demo-teacher.json", "compile-demo-teacher.json")) if r]
    reuse = [r for r in (_read(n) for n in ("feature-reuse-demo.json", "feature-reuse-students.json")) if r]
    return {
        "goals": goals_block(unet, _read("memory-demo.json"), _read("side-by-side-demo.json"),
                             _read("feature-reuse-demo.json"), _read("compile-demo-teacher.json")),
        "unet": [line for _, r in unet for line in unet_block(r) + [""]][:-1] or ["(no UNet report committed yet)"],
        "family": family_block(_read("memory-demo.json"), _read("side-by-side-demo.json")),
        "options": options_block(options),
        "reuse": options_block(reuse),
        "profile": profile_block(reuse) if reuse else ["(no profile yet)"],
    }


def replace_marked(text: str, start: str, end: str, lines: list[str]) -> str:
    """``text`` with the lines between the marker lines ``start`` and ``end`` replaced by ``lines`` (first block
    only); ValueError when the markers are missing. Also writes the demo family's report blocks (training)."""
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no '{start}' ... '{end}' block")
    return pattern.sub(lambda _: "\n".join([start, *lines, end]), text, count=1)


def replace_block(text: str, name: str, lines: list[str]) -> str:
    return replace_marked(text, START.format(name), END, lines)


def write_readme(path: Path = README) -> list[str]:
    """Rewrite every speed block of ``path``; the names of the blocks written."""
    text = path.read_text()
    written = blocks()
    for name, lines in written.items():
        text = replace_block(text, name, lines)
    path.write_text(text)
    return list(written)
