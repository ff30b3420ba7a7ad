r"""The LoRA demo: concepts the demo family never saw ("heart", "orange"), as data, as before/after scores, and a
teacher's LoRA ported to a student.

    python -m training.lora demo data --concept orange --out outputs/data/lora-orange
    python -m training.lora demo eval --model demo-ssd --concept orange \
        --lora assets/demo/loras/demo-ssd-orange.safetensors --n-concept 96 --n-original 96
    python -m training.lora demo port --lora assets/demo/loras/demo-teacher-orange.safetensors --student demo-ssd \
        --out outputs/models/loras/demo-ssd-orange-ported
"""
from __future__ import annotations

import argparse
import json
import sys

from studio.demo.concepts import CONCEPTS, export_concept_data
from training.demo_eval import concept_scores
from training.lora_files import port_lora
from training.models import default_guidance, load_base


def load_with_lora(model: str, lora: str | None = None, scale: float = 1.0):
    """``load_base(model)`` with a LoRA file or folder loaded through diffusers/peft at ``scale``."""
    pipe = load_base(model)
    if lora:
        pipe.load_lora_weights(str(lora), adapter_name="lora")
        pipe.set_adapters(["lora"], adapter_weights=[scale])
    return pipe


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m training.lora demo",
                                description="the demo family's new concepts: data and before/after scores")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="export a concept imagefolder (plus original-shape images)")
    d.add_argument("--out", required=True)
    d.add_argument("--concept", default="heart", choices=CONCEPTS)
    d.add_argument("--count", type=int, default=256)
    d.add_argument("--reg-count", type=int, default=256)
    d.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="concept and original-prompt accuracy of a model, with or without a LoRA")
    e.add_argument("--model", default="demo-teacher")
    e.add_argument("--concept", default="heart", choices=CONCEPTS)
    e.add_argument("--lora", default=None, help="LoRA file or folder")
    e.add_argument("--scale", type=float, default=1.0, help="LoRA scale")
    e.add_argument("--n-concept", type=int, default=48)
    e.add_argument("--n-original", type=int, default=48)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance", type=float, default=0.0, help="0 = the model's default")
    t = sub.add_parser("port", help="re-key a teacher's LoRA for a student through the student's name map")
    t.add_argument("--lora", required=True, help="the teacher's LoRA file or folder")
    t.add_argument("--student", required=True, help="student folder (with name_map.json) or registry name")
    t.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    if a.cmd == "port":
        try:
            file = port_lora(a.lora, a.student, a.out)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {file}")
        return 0
    if a.cmd == "data":
        out = export_concept_data(a.out, a.count, a.concept, reg_count=a.reg_count, seed=a.seed)
        print(f"wrote {a.count} {a.concept} + {a.reg_count} original images to {out}")
        return 0
    report = concept_scores(load_with_lora(a.model, a.lora, a.scale), a.concept, n_concept=a.n_concept,
                            n_original=a.n_original, steps=a.steps, guidance=a.guidance or default_guidance(a.model))
    print(json.dumps({"model": a.model, "lora": a.lora, "scale": a.scale if a.lora else None, **report}, indent=1))
    return 0
