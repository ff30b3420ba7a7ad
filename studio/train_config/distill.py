"""DistillConfig: what a distillation run trains (teachers, student, data, loss weights, stages); run by
``python -m training.distill --config <file>``.

    cfg = DistillConfig.load("configs/distill-demo-ssd.toml", {"steps": 10})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from studio.recipes import RECIPES
from studio.train_config.base import (FRACTION, NON_NEGATIVE, POSITIVE_COUNT, SAVE_DTYPES, TrainConfig, check_buckets,
                                      check_dataset, missing_model_hint)

FEATURE_LEVELS = ("layer", "block")


def parse_teachers(text: str) -> list[dict]:
    """CLI / form shorthand ``"path[@weight],path2[@weight]"`` -> ``[{path, weight}, ...]``."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if item:
            path, _, weight = item.rpartition("@") if "@" in item else (item, "", "")
            out.append({"path": path.strip(), "weight": float(weight) if weight.strip() else 1.0})
    return out


def teachers_text(teachers) -> str:
    """``[{path, weight}, ...]`` -> the shorthand (weight left out when 1)."""
    if isinstance(teachers, str):
        return teachers
    items = [t if isinstance(t, dict) else {"path": t} for t in teachers or []]
    return ", ".join(t["path"] + ("" if float(t.get("weight", 1.0)) == 1.0 else f"@{float(t['weight']):g}")
                     for t in items)


@dataclass
class DistillConfig(TrainConfig):
    """What to distill (the optimisation fields come from TrainConfig). Saved in every checkpoint and output."""

    teachers: list = field(  # teacher pipeline folders, loss weighted; form: "path[@weight], ..."
        default_factory=lambda: [{"path": "assets/demo/teacher", "weight": 1.0}])
    student: str = "ssd-1b"  # removal recipe applied to the (first) teacher, or an exported student folder
    student_keep: str = "spread"  # which transformer layers a recipe keeps: "spread" | "first"
    base_name: str = ""  # registry name of the teacher, written to the output's studio_model.json
    dataset: str = "demo"  # "demo" (synthetic shapes), an imagefolder (metadata.jsonl) or "hf:<name/path>"
    dataset_count: int = 1024  # images drawn from the demo generator
    caption_column: str = "text"
    buckets: list = field(default_factory=lambda: [[64, 64]])  # (width, height) training resolutions
    cache_latents: bool = True  # encode every image once (VAE frozen)
    cache_text: bool = True  # encode every caption once (text encoders frozen)
    cache_dir: str = ""  # also keep the latent and caption caches on disk here (captions memory-mapped)
    caption_dropout: float = 0.1  # rows trained unconditionally (zero embedding), keeps CFG working
    noise_offset: float = 0.0  # add this times per-channel noise (brighter darks / darker brights)
    lambda_task: float = 1.0  # weight of the task loss (noise MSE against the true noise)
    lambda_out: float = 0.5  # weight of MSE(student output, teacher output); SSD-1B / segmind 0.5; BK-SDM 1
    lambda_feat: float = 0.5  # weight of the feature loss (MSE of hooked student vs teacher features)
    feature_level: str = "layer"  # "layer" (SSD-1B) | "block" (BK-SDM)
    feature_weights: dict = field(default_factory=dict)  # student module name -> weight (others 1)
    stages: list = field(default_factory=list)  # progressive removal: [{at_step, units=[...]} or {at_step, recipe}]
    validation_prompts: list = field(default_factory=lambda: [
        "a red circle on a blue background", "a yellow star on a black background",
        "a white square on a green background", "a cyan cross on a purple background"])
    validation_steps: int = 20  # sampler steps of the validation images
    validation_guidance: float = 0.0  # CFG scale; 0 = the teacher's default
    overfit_batch: bool = False  # reuse step 0's batch, noise and timesteps every step (sanity check)
    save_dtype: str = "fp32"  # dtype of the exported student ("fp32" | "fp16" | "bf16"); checkpoints stay fp32
    output_dir: str = "outputs/distill"

    BOUNDS: ClassVar = {"dataset_count": POSITIVE_COUNT, "caption_dropout": FRACTION, "noise_offset": NON_NEGATIVE,
                        "lambda_task": NON_NEGATIVE, "lambda_out": NON_NEGATIVE, "lambda_feat": NON_NEGATIVE,
                        "validation_steps": POSITIVE_COUNT, "validation_guidance": NON_NEGATIVE}
    CHOICES: ClassVar = {"student_keep": ("spread", "first"), "feature_level": FEATURE_LEVELS,
                         "save_dtype": SAVE_DTYPES}
    SUGGESTIONS: ClassVar = {"student": tuple(RECIPES)}  # the form offers these; other values allowed (a folder)
    TEXT_CODECS: ClassVar = {"teachers": (teachers_text, parse_teachers)}  # the form edits this list as text
    FORM: ClassVar = ("teachers", "student", "student_keep", "dataset", "dataset_count", "lambda_task", "lambda_out",
                      "lambda_feat", "feature_level", "save_dtype")

    def __post_init__(self):
        super().__post_init__()
        self._check_teachers()
        if self.student not in RECIPES and not Path(self.student).is_dir():
            raise ValueError(f"DistillConfig.student: {self.student!r} is neither a recipe ({', '.join(RECIPES)}) "
                             f"nor an existing student folder")
        if self.dataset != "demo" and not self.dataset.startswith("hf:"):
            check_dataset(self, "'demo' (the synthetic shapes) or 'hf:<dataset name>'")
        check_buckets(self)
        if not (self.lambda_task or self.lambda_out or self.lambda_feat):
            raise ValueError("DistillConfig.lambda_task/lambda_out/lambda_feat: at least one must be > 0")
        if any(not isinstance(v, (int, float)) or v < 0 for v in self.feature_weights.values()):
            raise ValueError(f"DistillConfig.feature_weights: weights must be numbers >= 0; got {self.feature_weights}")
        self._check_stages()

    def _check_teachers(self) -> None:
        if isinstance(self.teachers, str):  # CLI shorthand: "path[@weight],path2[@weight]"
            self.teachers = parse_teachers(self.teachers)
        if not self.teachers:
            raise ValueError("DistillConfig.teachers: give at least one teacher pipeline folder")
        teachers = []
        for t in self.teachers:
            t = {"path": t} if isinstance(t, str) else dict(t)
            if set(t) - {"path", "weight"} or "path" not in t:
                raise ValueError(f"DistillConfig.teachers: each entry is {{path, weight}}; got {t}")
            t["weight"] = float(t.get("weight", 1.0))
            if not (Path(t["path"]) / "model_index.json").exists():
                what = "does not exist" if not Path(t["path"]).exists() else "is not a diffusers pipeline folder " \
                                                                             "(no model_index.json)"
                raise ValueError(f"DistillConfig.teachers: {t['path']!r} {what}; "
                                 f"{missing_model_hint(t['path'], self.base_name)}")
            if t["weight"] <= 0:
                raise ValueError(f"DistillConfig.teachers: weight must be > 0; got {t['weight']} for {t['path']}")
            teachers.append(t)
        self.teachers = teachers

    def _check_stages(self) -> None:
        last = 0
        for s in self.stages:
            if set(s) - {"at_step", "units", "recipe"} or "at_step" not in s or ("units" in s) == ("recipe" in s):
                raise ValueError(f"DistillConfig.stages: each stage is {{at_step, units}} or {{at_step, recipe}}; "
                                 f"got {s}")
            if not last < s["at_step"] < self.steps:
                raise ValueError(f"DistillConfig.stages: at_step must increase within (0, steps={self.steps}); "
                                 f"got {s['at_step']}")
            if "recipe" in s and s["recipe"] not in RECIPES:
                raise ValueError(f"DistillConfig.stages: unknown recipe {s['recipe']!r}; allowed: {', '.join(RECIPES)}")
            last = s["at_step"]
