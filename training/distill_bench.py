"""Distillation measurements: the cost of a KD step vs a plain fine-tuning step, and evaluator scores of an
exported student against its teacher on the demo family.

    python -m training.distill bench
    python -m training.distill evaluate --student outputs/distill/demo-ssd/final --n 100
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from studio.blocks import measure_macs
from training.distill import DistillConfig, _guidance, make_trainer


def bench(teacher: str | None = None, *, student: str = "ssd-1b", level: str = "layer", batch_size: int = 4,
          steps: int = 6, out: str | None = None) -> dict:
    """Median seconds of a KD step (teacher forward + hooks + student step) and of a plain fine-tuning step of the
    same student, measured alternately in one process; ``ratio`` = KD / plain."""
    import statistics
    import tempfile

    from studio.paths import DEMO_DIR

    tmp = Path(out or tempfile.mkdtemp(prefix="distill-bench-"))
    if teacher is None:
        teacher = str(DEMO_DIR / "teacher")
        if not (Path(teacher) / "model_index.json").exists():
            from studio.build import build_sdxl_pipeline
            from training.demo_family import TEACHER_ARCH, demo_tokenizer

            teacher = str(tmp / "random-teacher")
            build_sdxl_pipeline(TEACHER_ARCH, demo_tokenizer()).save_pretrained(teacher)
    common = dict(teachers=[{"path": teacher}], student=student, feature_level=level, batch_size=batch_size,
                  steps=steps + 1, dataset_count=64, validate_every=0, lr=1e-5)
    trainers = {name: make_trainer(DistillConfig(**common, **lam, output_dir=str(tmp / name)))
                for name, lam in (("kd", {}), ("plain", {"lambda_out": 0.0, "lambda_feat": 0.0}))}
    times = {name: [] for name in trainers}
    for tr in trainers.values():
        tr.prepare()
        tr.train_step()  # warm-up
    for _ in range(steps):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            tr.train_step()
            times[name].append(time.perf_counter() - t0)
    kd, plain = (statistics.median(times[n]) for n in ("kd", "plain"))
    task = trainers["kd"].task
    macs = {name: measure_macs(dict(unet.config), latent=unet.config.sample_size)[""]
            for name, unet in (("teacher", task.teachers[0][0]), ("student", task.model))}
    return {"teacher": teacher, "student": student, "feature_level": level, "pairs": len(task.pairs),
            "batch_size": batch_size, "device": str(task.device), "threads": torch.get_num_threads(),
            "teacher_params": sum(p.numel() for p in task.teachers[0][0].parameters()),
            "student_params": sum(p.numel() for p in task.model.parameters()),
            "kd_step_s": kd, "plain_step_s": plain, "ratio": kd / plain,
            # a training step is ~3 forwards (forward + backward); a live teacher adds one teacher forward
            "teacher_macs": macs["teacher"], "student_macs": macs["student"],
            "ratio_flop_bound": 1 + macs["teacher"] / (3 * macs["student"])}


# ---------------------------------------------------------------- evaluation (demo family)

def evaluate_student(student_dir: str | Path, teacher_dir: str | Path, *, n: int = 100, steps: int = 20,
                     guidance: float | None = None, split: str = "train", latency: bool = True) -> dict:
    """``studio.evaluator`` prompt-fidelity of an exported student (its ``unet/`` in the teacher's pipeline) and of
    the teacher on the same ``n`` (prompt, seed) pairs of the demo ``split``; plus 20-step latencies."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from training.demo_family import eval_prompts, evaluate_pipeline, measure_latency

    student_dir = Path(student_dir)
    guidance = guidance or _guidance(teacher_dir)  # students keep their teacher's default
    pipe = StableDiffusionXLPipeline.from_pretrained(teacher_dir)
    pipe.set_progress_bar_config(disable=True)
    prompts = eval_prompts(n, split)
    out = {"n": n, "steps": steps, "guidance": guidance, "split": split, "threads": torch.get_num_threads()}
    for name, unet in (("teacher", pipe.unet), ("student", UNet2DConditionModel.from_pretrained(student_dir / "unet"))):
        pipe.unet = unet.eval()
        report, _ = evaluate_pipeline(pipe, prompts, steps=steps, guidance_scale=guidance)
        report.pop("per_item", None)
        report["unet_params"] = sum(p.numel() for p in unet.parameters())
        if latency:
            report["latency"] = measure_latency(pipe, steps=steps, guidance_scale=guidance)
        out[name] = report
    return out
