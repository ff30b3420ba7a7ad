"""DistillConfig: what a distillation run trains (teachers, student, data, loss weights, stages); run by
``python -m training.distill --config <file>``.

    cfg = DistillConfig.load("configs/distill-demo-ssd.toml", {"steps": 10})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from studio.recipes import RECIPES
from studio.train_config.base import (FRACTION, MAX_COUNT, MAX_SHORTHAND, SAVE_DTYPES, Bound, TrainConfig, check_buckets,
                                      check_dataset, check_text_list, counts, missing_model_hint, require_number,
                                      require_path_text, require_text, weights)

FEATURE_LEVELS = ("layer", "block")
MAX_TEACHERS = 8
MAX_WEIGHT = 1000.0  # a teacher's, a loss term's or a feature's weight


def parse_teachers(value) -> list[dict]:
    """``teachers`` as a list of ``{path, weight}``: from that list, a list of paths, or the CLI shorthand
    ``"path[@weight],path2[@weight]"``; ValueError for anything else (weights are checked by the caller)."""
    if isinstance(value, str):
        require_text("DistillConfig", "teachers", value, MAX_SHORTHAND)
        value = [dict(zip(("path", "weight"), (p.strip() for p in t.rsplit("@", 1)))) for t in value.split(",")
                 if t.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("DistillConfig.teachers: give at least one teacher pipeline folder")
    if len(value) > MAX_TEACHERS:
        raise ValueError(f"DistillConfig.teachers: at most {MAX_TEACHERS} teachers; got {len(value)}")
    teachers = []
    for t in value:
        t = {"path": t} if isinstance(t, str) else t
        if not isinstance(t, dict) or set(t) - {"path", "weight"} or "path" not in t:
            raise ValueError(f"DistillConfig.teachers: each entry is {{path, weight}}; got {str(t)[:200]}")
        require_path_text("DistillConfig", "teachers (a path)", t["path"])
        weight = t.get("weight", 1.0)
        if isinstance(weight, str):
            try:
                weight = float(weight)
            except ValueError:
                raise ValueError(f"DistillConfig.teachers: weight must be a number; got {weight[:40]!r}") from None
        teachers.append({"path": t["path"], "weight": weight})
    return teachers


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

    BOUNDS: ClassVar = {"dataset_count": counts(low=1), "caption_dropout": FRACTION, "noise_offset": Bound(0, 10),
                        "lambda_task": weights(MAX_WEIGHT), "lambda_out": weights(MAX_WEIGHT),
                        "lambda_feat": weights(MAX_WEIGHT), "validation_steps": counts(150, 1),
                        "validation_guidance": Bound(0, 30)}
    PATH_FIELDS: ClassVar = {**TrainConfig.PATH_FIELDS, "teachers": "teachers", "student": "recipe-or-folder",
                             "dataset": "dataset", "cache_dir": "write"}
    SIZES: ClassVar = {"teachers": MAX_TEACHERS, "buckets": 64, "stages": 100, "validation_prompts": 64,
                       "feature_weights": 10_000}
    SHORTHAND: ClassVar = frozenset({"teachers"})
    CHOICES: ClassVar = {"student_keep": ("spread", "first"), "feature_level": FEATURE_LEVELS,
                         "save_dtype": SAVE_DTYPES}
    SUGGESTIONS: ClassVar = {"student": tuple(RECIPES)}  # the form offers these; other values allowed (a folder)
    TEXT_CODECS: ClassVar = {"teachers": (teachers_text, parse_teachers)}  # the form edits this list as text
    parse_teachers = staticmethod(parse_teachers)
    FORM: ClassVar = ("teachers", "student", "student_keep", "dataset", "dataset_count", "lambda_task", "lambda_out",
                      "lambda_feat", "feature_level", "save_dtype")

    def __post_init__(self):
        super().__post_init__()
        self._check_teachers()
        if self.student not in RECIPES and not Path(self.student).is_dir():  # its length was checked: no OSError
            raise ValueError(f"DistillConfig.student: {self.student!r} is neither a recipe ({', '.join(RECIPES)}) "
                             f"nor an existing student folder")
        if self.dataset != "demo" and not self.dataset.startswith("hf:"):
            check_dataset(self, "'demo' (the synthetic shapes) or 'hf:<dataset name>'")
        check_buckets(self)
        if not (self.lambda_task or self.lambda_out or self.lambda_feat):
            raise ValueError("DistillConfig.lambda_task/lambda_out/lambda_feat: at least one must be > 0")
        for module, weight in self.feature_weights.items():
            require_text("DistillConfig", "feature_weights (a module name)", module, 200)
            require_number("DistillConfig", f"feature_weights[{module!r}]", weight, "float", 0, MAX_WEIGHT)
        self._check_stages()
        check_text_list(self, "validation_prompts")
        require_text("DistillConfig", "base_name", self.base_name, 64)
        require_text("DistillConfig", "caption_column", self.caption_column, 64)

    def _check_teachers(self) -> None:
        self.teachers = parse_teachers(self.teachers)
        for t in self.teachers:
            if isinstance(t["weight"], (int, float)) and not isinstance(t["weight"], bool) and t["weight"] <= 0:
                raise ValueError(f"DistillConfig.teachers: weight must be > 0; got {t['weight']} for {t['path']}")
            require_number("DistillConfig", "teachers (a weight)", t["weight"], "float", 0, MAX_WEIGHT)
            t["weight"] = float(t["weight"])
            if not (Path(t["path"]) / "model_index.json").exists():
                what = "does not exist" if not Path(t["path"]).exists() else "is not a diffusers pipeline folder " \
                                                                             "(no model_index.json)"
                raise ValueError(f"DistillConfig.teachers: {t['path']!r} {what}; "
                                 f"{missing_model_hint(t['path'], self.base_name)}")

    def _check_stages(self) -> None:
        last = 0
        for s in self.stages:
            if not isinstance(s, dict) or set(s) - {"at_step", "units", "recipe"} or "at_step" not in s or \
                    ("units" in s) == ("recipe" in s):
                raise ValueError(f"DistillConfig.stages: each stage is {{at_step, units}} or {{at_step, recipe}}; "
                                 f"got {str(s)[:200]}")
            require_number("DistillConfig", "stages (at_step)", s["at_step"], "int", 1, MAX_COUNT)
            if "units" in s and (not isinstance(s["units"], list) or len(s["units"]) > 1000 or
                                 not all(isinstance(u, str) and len(u) <= 200 for u in s["units"])):
                raise ValueError(f"DistillConfig.stages: units is a list of at most 1000 unit names; got "
                                 f"{str(s['units'])[:200]}")
            if not last < s["at_step"] < self.steps:
                raise ValueError(f"DistillConfig.stages: at_step must increase within (0, steps={self.steps}); "
                                 f"got {s['at_step']}")
            if "recipe" in s and (not isinstance(s["recipe"], str) or s["recipe"] not in RECIPES):
                raise ValueError(f"DistillConfig.stages: unknown recipe {str(s['recipe'])[:64]!r}; allowed: {', '.join(RECIPES)}")
            last = s["at_step"]
