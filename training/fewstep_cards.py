"""The few-step report's tables, as the model cards, the README's few-step block and the report CLI print them,
and that CLI (``python -m training.fewstep report``): ``training.fewstep_eval`` measures; this renders a report
dict between the cards' marker comments.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from training.fewstep_eval import DEMO, PARTS, SR_EVAL_SEED, merge_report, run_report

MARK = "<!-- fewstep-report:{} -->", "<!-- /fewstep-report:{} -->"
CARDS = {"t2i": [DEMO / "lcm" / "README.md", DEMO / "loras" / "LCM-LORA.md", DEMO.parent.parent / "README.md"],
         "sr": [DEMO / "sr" / "README.md", DEMO.parent.parent / "README.md"]}


SR_MODELS = {"sr_undistilled": ("undistilled (task loss)", "configs/fewstep-demo-sr-task.toml"),
             "sr": ("single-stage (CoDi)", "configs/fewstep-demo-sr.toml"),
             "sr_two_stage": ("two-stage: LCD of the undistilled (stage 2 only)",
                              "configs/fewstep-demo-sr-two-stage.toml")}


def _run(r: dict, part: str) -> dict:
    """The command, prompt count, threads and load average ``part`` of the report was measured with."""
    return r.get("runs", {}).get(part, r)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def t2i_table(r: dict) -> str:
    t2i, lat, run = r["t2i"], r["latency"], _run(r, "t2i")
    ref = t2i["teacher@20"]["all"]
    lines = [f"Written by `{run['command']}`.", "", f"Evaluator all-attributes-correct on {run['n']} prompts "
             f"(`studio.demo.shapes.eval_prompts`, same seeds for every row); latency: one 64 px image, batch 1, "
             f"{run['threads']} thread(s), median of interleaved rounds (load average "
             f"{run['loadavg']['start'][0]:.1f} at the start, {run['loadavg']['end'][0]:.1f} at the end).",
             "", "| model | sampler | steps | CFG | all correct | vs teacher@20 | latency | speed-up vs teacher@20 |",
             "|---|---|---|---|---|---|---|---|"]

    def row(model, sampler, steps, guidance, score, lat_key=None):
        la = lat.get(lat_key) if lat_key else None
        lat_txt = f"{la['median_s'] * 1000:.0f} ms" if la else ""
        sp = f"{la['speedup_vs_teacher20']:.1f}x" if la else ""
        lines.append(f"| {model} | {sampler} | {steps} | {guidance:g} | {_pct(score)} | {100 * (score - ref):+.1f} | "
                     f"{lat_txt} | {sp} |")

    row("demo-teacher", "Euler", 20, t2i["teacher@20"]["guidance"], ref, "teacher@20")
    for key, label in (("teacher", "demo-teacher"), ("ssd", "demo-ssd")):
        if key == "ssd":
            row("demo-ssd", "Euler", 20, t2i["ssd@20"]["guidance"], t2i["ssd@20"]["all"], "ssd@20")
        for steps, res in t2i[f"{key} ordinary"].items():
            best = res["rows"][res["best"]]
            row(label, f"best ordinary: {res['best']}", steps, best["guidance"], best["all"],
                "teacher@4" if key == "teacher" and int(steps) == 4 else None)
    names = {"lcm": "demo-lcm (full LCM student)", "lcm_lora": "demo-teacher + demo-lcm-lora",
             "ssd_lcm_lora": "demo-ssd + demo-ssd-lcm-lora"}
    for key, label in names.items():
        for steps, res in t2i.get(key, {}).items():
            row(label, res.get("sampler", "LCM"), steps, res["guidance"], res["all"],
                f"{key}@4" if int(steps) == 4 else None)
        for steps, res in t2i.get(f"{key} LCM sampler", {}).items():
            row(f"{label}, LCM's own sampler", "LCM", steps, res["guidance"], res["all"])
    for key, label in (("lcm_lora", "demo-teacher, no LoRA (control)"), ("ssd_lcm_lora", "demo-ssd, no LoRA (control)")):
        for steps, res in t2i.get(f"{key} control", {}).items():
            row(label, res["sampler"], steps, res["guidance"], res["all"])
    lines += ["", "Size and training cost (steps, and the training command's wall-clock and CPU time from its log "
              "under `/usr/bin/time`; the machine was shared, so the CPU time is the fairer figure):", "",
              "| model | parameters | of its UNet | steps | wall | CPU user |", "|---|---|---|---|---|---|"]
    params, cost = r["params"], r.get("training", {})
    for key, label in names.items():
        if key not in params:
            continue
        unet = params["ssd_unet" if key == "ssd_lcm_lora" else "teacher_unet"]
        c = cost.get(key, {})
        wall = f"{c['wall_s'] / 60:.1f} min" if "wall_s" in c else ""
        user = f"{c['user_s'] / 60:.1f} min" if "user_s" in c else ""
        lines.append(f"| {label} | {params[key]:,} | {100 * params[key] / unet:.2f} % | {c.get('steps', '')} | "
                     f"{wall} | {user} |")
    return "\n".join(lines)


def sr_table(r: dict) -> str:
    sr, run = r["sr"], _run(r, "sr")
    lines = [f"Written by `{run['command']}` (load average {run['loadavg']['start'][0]:.1f} at the start, "
             f"{run['loadavg']['end'][0]:.1f} at the end).", "",
             f"4x super-resolution (16x16 condition -> 64x64) on {sr['n']} synthetic images never used in training "
             f"(seed {SR_EVAL_SEED}); PSNR / SSIM to the ground truth, evaluator all-correct on the output.", "",
             "| model | steps | PSNR (dB) | SSIM | all correct | sampler |", "|---|---|---|---|---|---|"]
    for label, res in sr["rows"].items():
        if "psnr" in res:
            lines.append(f"| {label} | - | {res['psnr']:.2f} | {res['ssim']:.3f} | {_pct(res['all'])} | - |")
            continue
        for steps, v in res.items():
            lines.append(f"| {label} | {steps} | {v['psnr']:.2f} | {v['ssim']:.3f} | {_pct(v['all'])} | "
                         f"{v.get('sampler', 'LCM')} |")
    cost = {k: v for k, v in r.get("training", {}).items() if k in SR_MODELS}
    if cost:
        lines += ["", "Training cost (`scripts/train_sr.sh`: the training command's wall-clock and CPU time from its "
                  "log under `/usr/bin/time`, 1 thread; the machine was shared, so the CPU time is the fairer figure):",
                  "", "| model | config | steps | wall | CPU user |", "|---|---|---|---|---|"]
        for key, (label, config) in SR_MODELS.items():
            if key in cost:
                c = cost[key]
                wall, user = (f"{c[k] / 60:.1f} min" if k in c else "" for k in ("wall_s", "user_s"))
                lines.append(f"| {label} | `{config}` | {c.get('steps', '')} | {wall} | {user} |")
    return "\n".join(lines)


def write_cards(report: dict, cards: dict | None = None) -> list[Path]:
    """Replace the text between the ``fewstep-report`` marker comments of each card with the fresh table."""
    written = []
    for key, paths in (cards or CARDS).items():
        if not report.get(key):
            continue
        table = t2i_table(report) if key == "t2i" else sr_table(report)
        for path in paths:
            if not path.exists():
                continue
            text, (start, end) = path.read_text(), (MARK[0].format(key), MARK[1].format(key))
            if start not in text or end not in text:
                continue
            head, rest = text.split(start, 1)
            path.write_text(head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])
            written.append(path)
    return written


def report_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m training.fewstep report",
                                description="side-by-side few-step report of the demo family")
    p.add_argument("--n", type=int, default=96, help="prompts / images per configuration (>= 96 for the cards)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latency-rounds", type=int, default=5)
    p.add_argument("--json", default=str(DEMO / "fewstep-report.json"))
    p.add_argument("--no-cards", action="store_true", help="do not rewrite the model cards' tables")
    p.add_argument("--from-json", default="", help="re-render the tables of a saved report (no measuring)")
    p.add_argument("--only", choices=tuple(PARTS), default="",
                   help="measure only this part and replace it in the existing --json (the other part is kept)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.from_json:
        report = json.loads(Path(a.from_json).read_text())
    else:
        report = run_report(a.n, latency_rounds=a.latency_rounds, parts=(a.only,) if a.only else tuple(PARTS))
        if a.only and Path(a.json).exists():
            report = merge_report(json.loads(Path(a.json).read_text()), report, a.only)
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    if report.get("t2i"):
        print(t2i_table(report))
    if report.get("sr"):
        print(sr_table(report))
    if not a.no_cards:
        for path in write_cards(report):
            print(f"updated {path}")
    return 0
