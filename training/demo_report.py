"""The demo family's numbers, all from one run: prompt fidelity of the teacher, the distilled students, their
task-loss-only baselines and undistilled initialisations, the LoRAs with and without their adapters, and latencies
timed side by side; written to every ``eval.json`` and to the tables of the README and the model cards.

    python -m training.demo_family report                 # evaluate (1 thread, ~30-60 min on 2 shared cores)
    python -m training.demo_family report --tables-only   # re-render the tables from the eval.json files

Every model draws the same (prompt, seed) pairs (``studio.demo.shapes.eval_prompts``), 20 Euler steps, CFG 5, with
the teacher's text encoders, VAE and scheduler (what the registry loads for the UNet-only students). Tables are
rewritten between ``<!-- report:<name> ... -->`` and ``<!-- /report -->`` markers; text outside them is left alone.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from studio.demo.concepts import concept_prompts, evaluate_concept
from studio.demo.shapes import HELDOUT, eval_prompts
from studio.bench.readme import replace_marked
from studio.paths import DEMO_DIR, REPO_ROOT
from training.demo_card import REPORT_END, REPORT_START
from training.demo_eval import evaluate_pipeline, render, time_interleaved

COMMAND = "python -m training.demo_family report"
SETTINGS = {"n": 96, "heldout_n": 2 * len(HELDOUT), "concept_n": 96, "steps": 20, "guidance": 5.0, "threads": 1,
            "latency_repeats": 5}
STUDENTS = {"ssd": "ssd-1b", "vega": "vega"}  # assets/demo/<folder> -> the removal recipe it was made with
BASELINES = DEMO_DIR / "baselines"  # <student>-task-only/unet: same init, data, steps and seed, λ_out = λ_feat = 0
LORAS = {"demo-teacher-orange": "teacher", "demo-ssd-orange": "ssd"}  # assets/demo/loras/<name>.safetensors -> base
CONCEPT = "orange"
ATTRS = ("all", "shape", "colour", "background")


# ---------------------------------------------------------------- evaluation

def _pipeline_with(pipe, unet):
    from diffusers import StableDiffusionXLPipeline

    out = StableDiffusionXLPipeline(**{**pipe.components, "unet": unet.eval()})
    out.set_progress_bar_config(disable=True)
    return out


def _params(unet) -> int:
    return sum(p.numel() for p in unet.parameters())


def family_unets(teacher_pipe) -> dict[str, dict]:
    """Every UNet of the family table: name -> {unet, student, kind} (kind: teacher/kd/task_only/undistilled)."""
    from diffusers import UNet2DConditionModel

    from studio.recipes import recipe_plan
    from studio.removal import build_student

    teacher = teacher_pipe.unet
    out = {"demo-teacher": {"unet": teacher, "student": None, "kind": "teacher"}}
    for folder, recipe in STUDENTS.items():
        config = json.loads((DEMO_DIR / folder / "distill_config.json").read_text())
        plan = recipe_plan(recipe, dict(teacher.config), keep=config["student_keep"])
        out[f"demo-{folder}"] = {"unet": UNet2DConditionModel.from_pretrained(DEMO_DIR / folder / "unet"),
                                 "student": folder, "kind": "kd"}
        baseline = BASELINES / f"{folder}-task-only" / "unet"
        if baseline.is_dir():
            out[f"{folder}-task-only"] = {"unet": UNet2DConditionModel.from_pretrained(
                baseline, torch_dtype=torch.float32), "student": folder, "kind": "task_only"}
        out[f"{folder}-undistilled"] = {"unet": build_student(teacher, plan)[0], "student": folder,
                                        "kind": "undistilled"}
    return out


def evaluate_family(settings: dict = SETTINGS, log=print) -> dict:
    """Run every evaluation of the report; returns {"family", "teacher_heldout", "latency", "loras", ...}."""
    from training.lora_demo import load_with_lora
    from training.models import load_base

    torch.set_num_threads(settings["threads"])
    steps, guidance = settings["steps"], settings["guidance"]
    t0 = time.time()
    base = load_base(str(DEMO_DIR / "teacher"))
    unets = family_unets(base)
    pipes = {name: _pipeline_with(base, m["unet"]) for name, m in unets.items()}
    train, concept = eval_prompts(settings["n"], "train"), concept_prompts(settings["concept_n"], CONCEPT)

    def concept_accuracy(pipe):
        return evaluate_concept(render(pipe, concept, steps=steps, guidance=guidance),
                                [p for p, _ in concept])["accuracy"]

    family = {}
    for name, m in unets.items():
        log(f"[{time.time() - t0:5.0f}s] {name}: {len(train)} prompts")
        report, _ = evaluate_pipeline(pipes[name], train, steps=steps, guidance=guidance)
        family[name] = report | {"kind": m["kind"], "student": m["student"], "unet_params": _params(m["unet"])}
    log(f"[{time.time() - t0:5.0f}s] demo-teacher: held-out prompts")
    heldout, _ = evaluate_pipeline(pipes["demo-teacher"], eval_prompts(settings["heldout_n"], "heldout"),
                                   steps=steps, guidance=guidance)
    log(f"[{time.time() - t0:5.0f}s] latency, interleaved")
    timed = ["demo-teacher"] + [f"demo-{f}" for f in STUDENTS]
    load = [os.getloadavg()[0]]  # other work on the machine: absolute latencies scale with it, ratios much less
    latency = time_interleaved({n: pipes[n] for n in timed}, steps=steps, guidance=guidance,
                               repeats=settings["latency_repeats"])
    load.append(os.getloadavg()[0])
    loras = {}
    for lora, folder in LORAS.items():
        model = "demo-teacher" if folder == "teacher" else f"demo-{folder}"
        log(f"[{time.time() - t0:5.0f}s] {lora}: {len(concept)} {CONCEPT} prompts without and with the LoRA")
        file = DEMO_DIR / "loras" / f"{lora}.safetensors"
        with_lora = load_with_lora(model, str(file))
        original, _ = evaluate_pipeline(with_lora, train, steps=steps, guidance=guidance)
        loras[lora] = {"base": model, "file": str(file.relative_to(REPO_ROOT)), "file_bytes": file.stat().st_size,
                       "without": {"concept_accuracy": concept_accuracy(pipes[model]),
                                   "original_accuracy": family[model]["accuracy"]},
                       "with": {"concept_accuracy": concept_accuracy(with_lora),
                                "original_accuracy": original["accuracy"]}}
        del with_lora
    log(f"[{time.time() - t0:5.0f}s] done")
    return {"command": COMMAND, "settings": dict(settings), "torch": torch.__version__, "family": family,
            "teacher_heldout": heldout, "latency": latency, "load_average": load, "concept": CONCEPT, "loras": loras,
            "minutes": round((time.time() - t0) / 60, 1)}


# ---------------------------------------------------------------- eval.json files

HEAD = ("command", "settings", "torch", "load_average")  # what every eval.json of one run repeats


def _head(result: dict) -> dict:
    return {k: result[k] for k in HEAD}


def write_eval_files(result: dict) -> list[Path]:
    """assets/demo/{teacher,ssd,vega,loras}/eval.json from one report run."""
    family, latency = result["family"], result["latency"]
    written = []

    def write(path: Path, data: dict) -> None:
        path.write_text(json.dumps(data, indent=1) + "\n")
        written.append(path)

    teacher = family["demo-teacher"] | {"latency": latency["demo-teacher"]}
    write(DEMO_DIR / "teacher" / "eval.json", _head(result) | {"train": teacher, "heldout": result["teacher_heldout"]})
    for folder in STUDENTS:
        rows = {m["kind"]: m for m in family.values() if m["student"] == folder}
        rows["kd"] = rows["kd"] | {"latency": latency[f"demo-{folder}"]}
        write(DEMO_DIR / folder / "eval.json", _head(result) | {
            "student": rows["kd"], "task_only": rows.get("task_only"), "undistilled_init": rows["undistilled"],
            "teacher": teacher})
    write(DEMO_DIR / "loras" / "eval.json", _head(result) | {"concept": result["concept"], **result["loras"]})
    return written


def read_eval_files() -> dict:
    """The report run back from the eval.json files (what ``--tables-only`` renders)."""
    teacher = json.loads((DEMO_DIR / "teacher" / "eval.json").read_text())
    family = {"demo-teacher": teacher["train"]}
    latency = {"demo-teacher": teacher["train"]["latency"]}
    for folder in STUDENTS:
        ev = json.loads((DEMO_DIR / folder / "eval.json").read_text())
        family[f"demo-{folder}"], latency[f"demo-{folder}"] = ev["student"], ev["student"]["latency"]
        if ev.get("task_only"):
            family[f"{folder}-task-only"] = ev["task_only"]
        family[f"{folder}-undistilled"] = ev["undistilled_init"]
    loras = json.loads((DEMO_DIR / "loras" / "eval.json").read_text())
    head = {k: teacher[k] for k in HEAD}
    return head | {"family": family, "teacher_heldout": teacher["heldout"], "latency": latency,
                   "concept": loras["concept"], "loras": {k: loras[k] for k in LORAS if k in loras}}


# ---------------------------------------------------------------- tables

def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _stderr(p: float, n: int) -> float:
    """Binomial standard error of a share p over n prompts, in points."""
    return 100 * math.sqrt(max(p * (1 - p), 1e-9) / n)


LABELS = {"teacher": "teacher", "kd": "distilled (task + output KD + feature KD)",
          "task_only": "task loss only (same init, data, steps, seed; λ_out = λ_feat = 0)",
          "undistilled": "before distillation (teacher layers copied)"}


def family_table(result: dict, students: tuple[str, ...] = tuple(STUDENTS)) -> list[str]:
    family, latency = result["family"], result["latency"]
    t_lat = latency["demo-teacher"]["median_s"]
    lines = ["| model | UNet params | median latency | speed-up | all correct | shape | colour | background |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in family.items():
        if row["student"] not in (None, *students):
            continue
        a = row["accuracy"]
        lat = latency.get(name)
        speed = (f"{lat['median_s']:.2f} s", f"{t_lat / lat['median_s']:.2f}×") if lat else (
            f"as `demo-{row['student']}`", "")
        label = f"`{name}`: {LABELS[row['kind']]}" if row["kind"] != "teacher" else "`demo-teacher`"
        lines.append(f"| {label} | {row['unet_params']:,} | {speed[0]} | {speed[1]} | " +
                     " | ".join(_pct(a[k]) for k in ATTRS) + " |")
    return lines


def family_summary(result: dict, students: tuple[str, ...] = tuple(STUDENTS)) -> list[str]:
    s, family = result["settings"], result["family"]
    n = family["demo-teacher"]["n"]
    out = [f"{n} prompts of the training distribution (`eval_prompts({n}, 'train')`, one seed each, the same for every "
           f"model), {s['steps']} Euler steps, CFG {s['guidance']:g}; latency: one 64 px image, batch 1, median of "
           f"{s['latency_repeats']} runs after a warm-up, teacher and students taking turns in one process, "
           f"{s['threads']} CPU thread, torch {result['torch']}, on the project's shared 2-core machine (1-minute "
           f"load average {result['load_average'][0]:.1f} → {result['load_average'][1]:.1f} while timing: absolute "
           f"latencies grow with the load; ratios of models timed in turn are steadier, not immune). Chance: shape "
           f"16.7 %, "
           f"colour 14.3 %, background 12.5 %. Standard error of a score near 85 % over {n} prompts: "
           f"±{_stderr(0.85, n):.1f} points."]
    for folder in students:
        kd, init = family[f"demo-{folder}"]["accuracy"]["all"], family[f"{folder}-undistilled"]["accuracy"]["all"]
        line = (f"`demo-{folder}`: distillation takes all-correct from {_pct(init)} (teacher layers copied) to "
                f"{_pct(kd)}")
        task = family.get(f"{folder}-task-only")
        if task:
            gain, noise = 100 * (kd - task["accuracy"]["all"]), 2 * _stderr(kd, n)
            line += (f"; the task-loss-only baseline reaches {_pct(task['accuracy']['all'])}, so the KD terms add "
                     f"{gain:+.1f} points ({'within' if abs(gain) < noise else 'beyond'} two standard errors, "
                     f"±{noise:.1f})")
        out.append(line + ".")
    return out


def teacher_table(result: dict) -> list[str]:
    rows = (("training-distribution combinations", result["family"]["demo-teacher"]),
            ("held-out combinations (never seen)", result["teacher_heldout"]))
    lines = ["| prompts | n | all three | shape | colour | background |", "|---|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {r['n']} | " + " | ".join(_pct(r["accuracy"][k]) for k in ATTRS) + " |")
    lat, s = result["latency"]["demo-teacher"], result["settings"]
    lines += ["", f"`studio/demo/evaluator.py` (analytic: border colour, core-pixel colour, template IoU of the shape "
                  f"mask), {s['steps']} Euler steps, CFG {s['guidance']:g}, one seed per prompt. Latency of one 64 px "
                  f"image (batch 1, CFG): median {lat['median_s']:.2f} s, min {lat['min_s']:.2f} s of "
                  f"{len(lat['runs'])} runs, {s['threads']} CPU thread, timed in turn with the students."]
    return lines


def lora_table(result: dict) -> list[str]:
    concept = result["concept"]
    lines = [f"| model | {concept}: colour | {concept}: shape | {concept}: background | {concept}: all | "
             f"original: all (bg / colour / shape) |", "|---|---|---|---|---|---|"]
    for lora, r in result["loras"].items():
        for label, key in ((f"`{r['base']}`", "without"), (f"+ `{lora}`", "with")):
            c, o = r[key]["concept_accuracy"], r[key]["original_accuracy"]
            lines.append(f"| {label} | {_pct(c['colour'])} | {_pct(c['shape'])} | {_pct(c['background'])} | "
                         f"{_pct(c['all'])} | {_pct(o['all'])} ({_pct(o['background'])} / {_pct(o['colour'])} / "
                         f"{_pct(o['shape'])}) |")
    s = result["settings"]
    lines += ["", f"{s['concept_n']} `{concept}` prompts (`concept_prompts`) and the {s['n']} original prompts of the "
                  f"family table, {s['steps']} Euler steps, CFG {s['guidance']:g}. Chance for the {concept} colour: "
                  f"12.5 %."]
    return lines


def blocks(result: dict) -> dict[Path, dict[str, list[str]]]:
    """File -> {marker name: table lines} for everything the report writes."""
    readme = family_table(result) + [""] + family_summary(result)
    return {
        REPO_ROOT / "README.md": {"family": readme, "loras": lora_table(result)},
        DEMO_DIR / "teacher" / "README.md": {"teacher": teacher_table(result)},
        **{DEMO_DIR / f / "README.md": {f: family_table(result, (f,)) + [""] + family_summary(result, (f,))}
           for f in STUDENTS},
        DEMO_DIR / "loras" / "README.md": {"loras": lora_table(result)},
    }


def replace_block(text: str, name: str, lines: list[str]) -> str:
    """``text`` with the marker block ``name`` holding ``lines``; ValueError when the markers are missing."""
    return replace_marked(text, REPORT_START.format(name), REPORT_END, lines)


def write_tables(result: dict) -> list[Path]:
    written = []
    for path, named in blocks(result).items():
        text = path.read_text()
        for name, lines in named.items():
            try:
                text = replace_block(text, name, lines)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
        path.write_text(text)
        written.append(path)
    return written


def report(*, tables_only: bool = False, settings: dict = SETTINGS, log=print) -> list[Path]:
    """Evaluate (unless ``tables_only``), write the eval.json files, rewrite the tables; the files written."""
    if tables_only:
        return write_tables(read_eval_files())
    result = evaluate_family(settings, log=log)
    return write_eval_files(result) + write_tables(result)
