"""The demo family from the command line: train the teacher, score any model, and the report behind every number.

    python -m training.demo_family teacher --out assets/demo/teacher --steps 4000 --minutes 43 --threads 1
    python -m training.demo_family evaluate --model outputs/distill/demo-ssd/final --n 96   # any name or folder
    python -m training.demo_family report            # every eval.json and table of the committed family

The students are made by ``python -m training.distill`` (configs/distill-demo-*.toml), the LoRAs by
``python -m training.lora`` (configs/lora-demo-*.toml).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo_family", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teacher", help="train the teacher and save it with its model card")
    t.add_argument("--out", required=True)
    for flag, typ, name in (("--steps", int, "steps"), ("--vae-steps", int, "vae_steps"),
                            ("--batch-size", int, "batch_size"), ("--lr", float, "lr"),
                            ("--num-images", int, "num_images"), ("--seed", int, "seed")):
        t.add_argument(flag, type=typ, default=None, help=f"TeacherConfig.{name} (default: the preset's)")
    t.add_argument("--minutes", type=float, default=None, help="wall-clock cap for training")
    t.add_argument("--tiny", action="store_true", help="toy widths (tests, smoke runs)")
    t.add_argument("--checkpoint-every", type=int, default=0, help="save checkpoint-<step> folders (0 = never)")
    e = sub.add_parser("evaluate", help="prompt fidelity of models (registry names or folders) on one prompt set")
    e.add_argument("--model", action="append", required=True, help="repeat to score several on the same prompts")
    e.add_argument("--n", type=int, default=96)
    e.add_argument("--split", default="train", choices=("train", "heldout"))
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance", type=float, default=0.0, help="0 = each model's default")
    e.add_argument("--grid", default=None, help="save a PNG grid of the first model's images here")
    r = sub.add_parser("report", help="re-evaluate the committed family; write eval.json files and the tables")
    r.add_argument("--tables-only", action="store_true", help="only re-render the tables from the eval.json files")
    for q in (t, e):
        q.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend on it)")
    a = p.parse_args(argv)
    if a.cmd == "report":
        from training.demo_report import report

        for path in report(tables_only=a.tables_only):
            print(f"wrote {path}")
        return 0
    torch.set_num_threads(a.threads)
    if a.cmd == "teacher":
        from training.demo_card import write_model_card
        from training.demo_teacher import TeacherConfig, train_teacher

        fields = {k: getattr(a, k) for k in ("steps", "vae_steps", "batch_size", "lr", "num_images", "seed")
                  if getattr(a, k) is not None}
        cfg = TeacherConfig.tiny(**fields) if a.tiny else TeacherConfig(**fields)
        res = train_teacher(cfg, a.out, minutes=a.minutes, checkpoint_every=a.checkpoint_every)
        print(json.dumps({"seconds": res.seconds, "steps_done": res.steps_done}))
        write_model_card(a.out)
        return 0
    from studio.demo.shapes import eval_prompts
    from training.demo_eval import evaluate_pipeline, save_grid
    from training.models import default_guidance, load_base

    pairs = eval_prompts(a.n, a.split)
    reports = {}
    for i, model in enumerate(a.model):
        pipe = load_base(model)
        report, images = evaluate_pipeline(pipe, pairs, steps=a.steps, guidance=a.guidance or default_guidance(model))
        reports[model] = report | {"unet_params": sum(p.numel() for p in pipe.unet.parameters())}
        if a.grid and i == 0:
            save_grid(images, a.grid)
    print(json.dumps({"split": a.split, "threads": a.threads, **reports}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
