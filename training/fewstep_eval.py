"""Few-step measurements on the demo family: validation scores during training and the side-by-side report that writes
the few-step model cards' tables and a JSON.

    python -m training.fewstep report                  # every demo few-step model, 96 prompts, 1 thread
    python -m training.fewstep report --n 200 --json outputs/fewstep-report.json --no-cards
    python -m training.fewstep report --only t2i       # re-measure one part; the JSON keeps the other part as it was

Text-to-image quality is ``studio.demo.evaluator``'s all-attributes-correct rate on ``studio.demo.shapes.eval_prompts``
(same prompts and seeds for every model); super-resolution quality is PSNR / SSIM to the ground truth and the
evaluator on the output, on synthetic images drawn with a seed the training data never used. Latencies: one 64 px
image (batch 1), every configuration timed in turn, round after round, in the same process (median of the rounds).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from studio.demo import shapes
from studio.demo.evaluator import evaluate_batch, parse_prompt
from studio.fewstep import control_image, load_fewstep_pipeline, low_res, recommended_settings
from training.demo_eval import evaluate_pipeline

SR_EVAL_SEED = 2024  # synthetic images of the super-resolution evaluation (training uses the config's seed, 0)
STEPS = (1, 2, 4, 8)
BASELINE_STEPS = (2, 4, 8)
# ordinary samplers tried for the few-step baselines (the best one per step count is reported)
ORDINARY = (("Euler", {}), ("Euler", {"timestep_spacing": "trailing"}))


# ---------------------------------------------------------------- metrics

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (H, W, 3)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, L 255), mean over channels and
    the valid window positions, of two uint8 images (H, W, 3)."""
    x = torch.tensor(a, dtype=torch.float64).permute(2, 0, 1)[:, None]
    y = torch.tensor(b, dtype=torch.float64).permute(2, 0, 1)[:, None]
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :])[None, None]

    def blur(t):
        return torch.nn.functional.conv2d(t, win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def sr_items(n: int, *, size: int = 64) -> list[tuple]:
    """``n`` (ground-truth PIL image, caption) pairs for the super-resolution evaluation."""
    return [(s.image, s.text) for s in (shapes.sample(i, "train", seed=SR_EVAL_SEED, size=size) for i in range(n))]


@torch.no_grad()
def evaluate_sr(pipe, items: list[tuple], *, steps: int, guidance: float, condition_size: int = 16, batch: int = 8,
                seed: int = 0) -> tuple[dict, list]:
    """PSNR / SSIM to the ground truth and evaluator accuracy of a conditional pipeline's outputs."""
    images = []
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        size = chunk[0][0].width
        images += pipe([c for _, c in chunk], image=[low_res(im, size, condition_size) for im, _ in chunk],
                       height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                       generator=[torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]).images
    return score_sr(images, items), images


def score_sr(images: list, items: list[tuple]) -> dict:
    truth = [np.asarray(im.convert("RGB")) for im, _ in items]
    out = [np.asarray(im.convert("RGB")) for im in images]
    acc = evaluate_batch(images, [c for _, c in items])["accuracy"]
    return {"psnr": float(np.mean([psnr(a, b) for a, b in zip(out, truth)])),
            "ssim": float(np.mean([ssim(a, b) for a, b in zip(out, truth)])), "all": acc["all"], "accuracy": acc}


# ---------------------------------------------------------------- validation during training

def _grid(rows: list[list], path: Path) -> None:
    from PIL import Image

    w, h = max(im.size for row in rows for im in row)
    grid = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)))
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((w, h)), (x * w, y * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


@torch.no_grad()
def validation_scores(task, step: int, out_dir: Path) -> dict[str, float]:
    """Few-step validation of a FewStepTask: text-to-image -> ``val_all`` (evaluator) over ``validation_prompts``;
    conditional -> ``val_psnr`` over four evaluation images (grid rows: condition, output, ground truth)."""
    cfg, rec = task.cfg, task.recommended
    pipe = task.pipeline()
    if cfg.condition:
        items = sr_items(4, size=cfg.resolution)
        report, images = evaluate_sr(pipe, items, steps=rec["steps"], guidance=rec["guidance"],
                                     condition_size=cfg.condition_size)
        lows = [low_res(im, cfg.resolution, cfg.condition_size) for im, _ in items]
        _grid([lows, images, [im for im, _ in items]], out_dir / f"step-{step:06d}.png")
        return {"val_psnr": report["psnr"]}
    prompts = list(cfg.validation_prompts)
    if not prompts:
        return {}
    images = pipe(prompts, num_inference_steps=rec["steps"], guidance_scale=rec["guidance"],
                  height=cfg.resolution, width=cfg.resolution,
                  generator=[torch.Generator().manual_seed(cfg.seed + i) for i in range(len(prompts))]).images
    _grid([images], out_dir / f"step-{step:06d}.png")
    scored = []
    for im, p in zip(images, prompts):
        try:
            parse_prompt(p)
            scored.append((im, p))
        except ValueError:
            pass
    return {"val_all": evaluate_batch(*map(list, zip(*scored)))["accuracy"]["all"]} if scored else {}


# ---------------------------------------------------------------- the report

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"
MODELS = {"teacher": DEMO / "teacher", "ssd": DEMO / "ssd", "lcm": DEMO / "lcm",
          "lcm_lora": DEMO / "loras" / "demo-lcm-lora.safetensors",
          "ssd_lcm_lora": DEMO / "loras" / "demo-ssd-lcm-lora.safetensors",
          "sr": DEMO / "sr", "sr_undistilled": DEMO / "sr" / "baselines" / "undistilled",
          "sr_two_stage": DEMO / "sr" / "baselines" / "two-stage"}
# the tail of each shipped model's training log: the CLI's "done:" line and /usr/bin/time's
# "TIME <wall> s wall, <user> s user, <sys> s sys" line (-f "TIME %e s wall, %U s user, %S s sys")
TRAIN_LOGS = {"lcm": DEMO / "lcm" / "train.log", "lcm_lora": DEMO / "loras" / "demo-lcm-lora.train.log",
              "ssd_lcm_lora": DEMO / "loras" / "demo-ssd-lcm-lora.train.log", "sr": DEMO / "sr" / "train.log",
              "sr_undistilled": DEMO / "sr" / "baselines" / "undistilled" / "train.log",
              "sr_two_stage": DEMO / "sr" / "baselines" / "two-stage" / "train.log"}


def _sampler(name: str, overrides: dict, base_config):
    from studio.schedulers import make_scheduler

    return make_scheduler(name, dict(base_config) | overrides)


def _label(name: str, overrides: dict) -> str:
    return name + (f" ({overrides['timestep_spacing']})" if "timestep_spacing" in overrides else "")


def _with_scheduler(pipe, scheduler):
    view = type(pipe)(**{**pipe.components, "scheduler": scheduler})
    view.set_progress_bar_config(disable=True)
    return view


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _t2i(pipe, prompts, steps, guidance) -> dict:
    report, _ = evaluate_pipeline(pipe, prompts, steps=steps, guidance=guidance)
    return {"all": report["accuracy"]["all"], "accuracy": report["accuracy"], "steps": steps, "guidance": guidance}


def _best_ordinary(pipe, prompts, guidance, score) -> dict:
    """{steps: {"best": label, "rows": {label: result}}} over ORDINARY at BASELINE_STEPS."""
    out = {}
    for steps in BASELINE_STEPS:
        rows = {}
        for name, over in ORDINARY:
            rows[_label(name, over)] = score(_with_scheduler(pipe, _sampler(name, over, pipe.scheduler.config)),
                                             steps, guidance)
        best = max(rows, key=lambda k: rows[k]["all"])
        out[steps] = {"best": best, "rows": rows}
    return out


def _latencies(configs: dict, rounds: int) -> dict:
    """Median seconds per image of each (pipe, steps, guidance), timed in turn round after round."""
    prompt = shapes.caption("star", "red", "blue")
    times = {k: [] for k in configs}
    for pipe, steps, guidance in configs.values():  # warm-up
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance)
    for _ in range(rounds):
        for key, (pipe, steps, guidance) in configs.items():
            t0 = time.perf_counter()
            pipe(prompt, num_inference_steps=steps, guidance_scale=guidance)
            times[key].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v)} for k, v in times.items()}


def _unet_params(pipe) -> int:
    return sum(p.numel() for p in pipe.unet.parameters())


PARTS = {"t2i": ("t2i", "latency", "params"), "sr": ("sr",)}  # the report's parts and the keys each one writes


def _part(train_key: str) -> str:
    return "sr" if train_key.startswith("sr") else "t2i"


def run_report(n: int = 96, *, latency_rounds: int = 5, models: dict | None = None, sr_guidances=(1.0, 5.0),
               parts=tuple(PARTS)) -> dict:
    """The demo few-step measurements of ``parts`` ("t2i", "sr"), side by side in this process; returns the report
    dict (``runs[part]``: the command, prompt count, threads and load average that part was measured with)."""
    from diffusers import StableDiffusionXLPipeline

    m = {k: Path(v) for k, v in (models or MODELS).items()}
    load0 = os.getloadavg()
    t_start = time.time()
    teacher = StableDiffusionXLPipeline.from_pretrained(m["teacher"])
    teacher.set_progress_bar_config(disable=True)
    guidance = 5.0
    prompts = shapes.eval_prompts(n, "train")
    command = "python -m training.fewstep report " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["report"] else [])
    report = {"n": n, "threads": torch.get_num_threads(), "torch": torch.__version__, "command": command.strip(),
              "t2i": {}, "sr": {}, "latency": {}, "params": {}}
    if "t2i" in parts:
        _t2i_report(report, m, teacher, prompts, guidance, latency_rounds)
    if "sr" in parts and (m["sr"] / "studio_model.json").exists():
        report["sr"] = _sr_report(m, teacher, n, sr_guidances)
    report["training"] = {k: training_cost(v) for k, v in TRAIN_LOGS.items() if _part(k) in parts and training_cost(v)}
    report["seconds"] = time.time() - t_start
    report["loadavg"] = {"start": load0, "end": os.getloadavg()}
    meta = {k: report[k] for k in ("n", "threads", "torch", "command", "seconds", "loadavg")}
    report["runs"] = {part: meta for part in parts}
    return report


def _t2i_report(report: dict, m: dict, teacher, prompts: list, guidance: float, latency_rounds: int) -> None:
    """The text-to-image part: baselines, the three LCM students at STEPS, latencies and sizes (into ``report``)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    ssd = StableDiffusionXLPipeline(**{**teacher.components,
                                       "unet": UNet2DConditionModel.from_pretrained(m["ssd"] / "unet")})
    ssd.set_progress_bar_config(disable=True)
    t2i, n = report["t2i"], len(prompts)
    _log(f"text-to-image, {n} prompts")
    t2i["teacher@20"] = _t2i(teacher, prompts, 20, guidance)
    t2i["ssd@20"] = _t2i(ssd, prompts, 20, guidance)
    for key, pipe in (("teacher", teacher), ("ssd", ssd)):
        t2i[f"{key} ordinary"] = _best_ordinary(pipe, prompts, guidance,
                                                lambda p, s, g: _t2i(p, prompts, s, g))
        _log(f"{key} ordinary samplers done")
    students = {"lcm": ("lcm", teacher), "lcm_lora": ("lcm_lora", teacher), "ssd_lcm_lora": ("ssd_lcm_lora", ssd)}
    pipes = {}
    for key, (model, base) in students.items():
        if not m[model].exists():
            continue
        rec = recommended_settings(m[model])
        pipes[key] = (load_fewstep_pipeline(m[model], base), rec)
        t2i[key] = {str(s): _t2i(pipes[key][0], prompts, s, rec["guidance"]) | {"sampler": rec["scheduler"]}
                    for s in STEPS}
        if rec["scheduler"] != "LCM":  # the same student under LCM's own (stochastic) sampler, for comparison
            lcm = _with_scheduler(pipes[key][0], _sampler("LCM", rec["scheduler_config"], base.scheduler.config))
            t2i[f"{key} LCM sampler"] = {str(s): _t2i(lcm, prompts, s, rec["guidance"]) | {"sampler": "LCM"}
                                         for s in STEPS}
        if key != "lcm":  # control: the LoRA's own sampler and skipping schedule at 4 steps on its base, no LoRA
            own = _sampler(rec["scheduler"], rec["scheduler_config"], base.scheduler.config)
            t2i[f"{key} control"] = {"4": _t2i(_with_scheduler(base, own), prompts, 4, rec["guidance"])
                                     | {"sampler": rec["scheduler"]}}
        _log(f"{key} done")
    report["params"] = {"teacher_unet": _unet_params(teacher), "ssd_unet": _unet_params(ssd)}
    for key in pipes:
        report["params"][key] = _unet_params(pipes[key][0]) if key == "lcm" else _file_params(m[key])
    # latency, batch 1
    configs = {"teacher@20": (teacher, 20, guidance), "ssd@20": (ssd, 20, guidance)}
    best4 = t2i["teacher ordinary"][4]["best"]
    name, over = next((nm, ov) for nm, ov in ORDINARY if _label(nm, ov) == best4)
    configs["teacher@4"] = (_with_scheduler(teacher, _sampler(name, over, teacher.scheduler.config)), 4, guidance)
    for key, (pipe, rec) in pipes.items():
        configs[f"{key}@4"] = (pipe, 4, rec["guidance"])
    _log("latency")
    lat = _latencies(configs, latency_rounds)
    ref = lat["teacher@20"]["median_s"]
    report["latency"] = {k: v | {"speedup_vs_teacher20": ref / v["median_s"]} for k, v in lat.items()}


def merge_report(old: dict, new: dict, part: str) -> dict:
    """``old`` with ``part``'s keys, training costs and run record replaced by ``new``'s (the other part kept)."""
    runs = old.get("runs") or {p: {k: old[k] for k in ("n", "threads", "torch", "command", "seconds", "loadavg")
                                   if k in old} for p in PARTS if old.get(p)}
    merged = old | {k: new[k] for k in PARTS[part]}
    merged["training"] = ({k: v for k, v in old.get("training", {}).items() if _part(k) != part}
                          | new.get("training", {}))
    merged["runs"] = runs | {part: new["runs"][part]}
    return merged


def training_cost(path: Path) -> dict:
    """Steps, wall and CPU seconds of a training run from the tail of its log (see TRAIN_LOGS); {} when absent."""
    import re

    if not path.exists():
        return {}
    text, out = path.read_text(), {}
    done = re.search(r"done: (\d+) steps in (\d+)s", text)
    timed = re.search(r"TIME ([\d.]+) s wall, ([\d.]+) s user, ([\d.]+) s sys", text)
    if done:
        out |= {"steps": int(done.group(1)), "train_loop_s": float(done.group(2))}
    if timed:
        out |= {"wall_s": float(timed.group(1)), "user_s": float(timed.group(2)), "sys_s": float(timed.group(3))}
    return out


def _file_params(path: Path) -> int:
    """Parameters stored in a safetensors file (an LCM-LoRA: its A and B matrices)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return sum(int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys())


def _sr_report(m: dict, teacher, n: int, guidances) -> dict:
    from diffusers.image_processor import VaeImageProcessor

    items = sr_items(n)
    out = {"n": n, "rows": {}}
    rows = out["rows"]
    # references: the condition upsampled as the pipelines prepare it, and the VAE round trip of the ground truth
    ups = [im.convert("RGB") for im in VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(
        control_image([low_res(im, 64, 16) for im, _ in items], 64)))]
    rows["condition upsampled (lanczos)"] = score_sr(ups, items)
    with torch.no_grad():
        px = teacher.image_processor.preprocess([im for im, _ in items])
        lat = teacher.vae.encode(px).latent_dist.mean
        rec_imgs = teacher.image_processor.postprocess(teacher.vae.decode(lat).sample, output_type="pil")
    rows["VAE round trip of the ground truth (ceiling)"] = score_sr(rec_imgs, items)
    _log("sr references done")
    for key, label in (("sr", "single-stage (CoDi)"), ("sr_two_stage", "two-stage (task, then LCD)")):
        if not (m[key] / "studio_model.json").exists():
            continue
        pipe, rec = load_fewstep_pipeline(m[key], teacher), recommended_settings(m[key])
        rows[label] = {str(s): evaluate_sr(pipe, items, steps=s, guidance=rec["guidance"])[0] for s in STEPS}
        _log(f"{label} done")
    if (m["sr_undistilled"] / "studio_model.json").exists():
        base = load_fewstep_pipeline(m["sr_undistilled"], teacher)
        by_steps = {}
        for s in STEPS:
            tried = {}
            for name, over in ORDINARY:
                for g in guidances:
                    pipe = _with_scheduler(base, _sampler(name, over, base.scheduler.config))
                    tried[f"{_label(name, over)}, CFG {g:g}"] = evaluate_sr(pipe, items, steps=s, guidance=g)[0]
            best = max(tried, key=lambda k: tried[k]["psnr"])
            by_steps[str(s)] = tried[best] | {"sampler": best, "tried": {k: v["psnr"] for k, v in tried.items()}}
        rows["undistilled (task loss, best ordinary sampler)"] = by_steps
        _log("undistilled done")
    return out
