"""The cost of distillation: a KD step (teacher forward + feature hooks + student step) against a plain fine-tuning
step of the same student, timed alternately in one process, next to the floor the arithmetic sets.

    python -m training.distill_bench --student ssd-1b          # the demo teacher, batch 4 at 64 px
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from studio.blocks import measure_macs
from studio.paths import DEMO_DIR
from studio.train_config.distill import FEATURE_LEVELS, DistillConfig
from training.distill import make_trainer


def bench(teacher: str | None = None, *, student: str = "ssd-1b", level: str = "layer", batch_size: int = 4,
          steps: int = 6, out: str | None = None) -> dict:
    """Median seconds of a KD step (teacher forward + hooks + student step) and of a plain fine-tuning step of the
    same student, measured alternately in one process; ``ratio`` = KD / plain. ``kd_steps_s`` / ``plain_steps_s``
    hold every timed step; ``ratio_flop_bound`` = 1 + teacher MACs / (3 x student MACs), the least a live teacher can
    add at equal precision (a training step is about three forwards)."""
    tmp = Path(out or tempfile.mkdtemp(prefix="distill-bench-"))
    if teacher is None:
        teacher = str(DEMO_DIR / "teacher")
        if not (Path(teacher) / "model_index.json").exists():
            from studio.build import build_sdxl_pipeline
            from training.demo_teacher import TEACHER_ARCH, demo_tokenizer

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
            "kd_steps_s": times["kd"], "plain_steps_s": times["plain"],
            # a training step is ~3 forwards (forward + backward); a live teacher adds one teacher forward
            "teacher_macs": macs["teacher"], "student_macs": macs["student"],
            "ratio_flop_bound": 1 + macs["teacher"] / (3 * macs["student"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.distill_bench", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=None, help="pipeline folder (default: the demo teacher, else random)")
    p.add_argument("--student", default="ssd-1b")
    p.add_argument("--level", default="layer", choices=FEATURE_LEVELS)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    a = p.parse_args(argv)
    r = bench(a.teacher, student=a.student, level=a.level, batch_size=a.batch_size, steps=a.steps)
    print(json.dumps(r, indent=1))
    print(f"KD step {r['kd_step_s'] * 1000:.0f} ms vs plain fine-tuning step {r['plain_step_s'] * 1000:.0f} ms: "
          f"ratio {r['ratio']:.2f}x (FLOP lower bound with a live teacher 1 + teacher/(3 x student) MACs = "
          f"{r['ratio_flop_bound']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
