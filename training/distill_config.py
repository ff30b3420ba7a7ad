"""DistillConfig: what a distillation run trains (teachers, student, data, loss weights, stages), validated on
construction and loaded from TOML/JSON with overrides by field name.

    cfg = load_config("configs/distill-demo-ssd.toml", {"steps": 10})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.trainer import TrainConfig, read_config_file

FEATURE_LEVELS = ("layer", "block")


@dataclass
class DistillConfig(TrainConfig):
    """What to distill (the optimisation fields come from TrainConfig). Saved in every checkpoint and output."""

    teachers: list = field(default_factory=lambda: [{"path": "assets/demo/teacher", "weight": 1.0}])  # pipelines
    student: str = "ssd-1b"  # removal recipe applied to the (first) teacher, or an exported student folder
    student_keep: str = "spread"  # which transformer layers a recipe keeps: "spread" | "first"
    base_name: str = ""  # registry name of the teacher, written to the output's studio_model.json
    dataset: str = "demo"  # "demo" (synthetic shapes), an imagefolder (metadata.jsonl) or "hf:<name/path>"
    dataset_count: int = 1024  # images drawn from the demo generator
    caption_column: str = "text"
    buckets: list = field(default_factory=lambda: [[64, 64]])  # (width, height) training resolutions
    cache_latents: bool = True  # encode every image once (VAE frozen)
    cache_text: bool = True  # encode every caption once (text encoders frozen)
    cache_dir: str = ""  # also keep the latent cache on disk here
    caption_dropout: float = 0.1  # rows trained unconditionally (zero embedding), keeps CFG working
    noise_offset: float = 0.0
    lambda_task: float = 1.0
    lambda_out: float = 0.5  # SSD-1B / segmind 0.5; BK-SDM 1
    lambda_feat: float = 0.5
    feature_level: str = "layer"  # "layer" (SSD-1B) | "block" (BK-SDM)
    feature_weights: dict = field(default_factory=dict)  # student module name -> weight (others 1)
    stages: list = field(default_factory=list)  # progressive removal: [{at_step, units=[...]} or {at_step, recipe}]
    validation_prompts: list = field(default_factory=lambda: [
        "a red circle on a blue background", "a yellow star on a black background",
        "a white square on a green background", "a cyan cross on a purple background"])
    validation_steps: int = 20  # sampler steps of the validation images
    validation_guidance: float = 0.0  # CFG scale; 0 = the teacher's default
    overfit_batch: bool = False  # reuse step 0's batch, noise and timesteps every step (sanity check)
    output_dir: str = "outputs/distill"

    def __post_init__(self):
        super().__post_init__()
        from studio.removal import RECIPES

        if isinstance(self.teachers, str):  # CLI shorthand: "path[@weight],path2[@weight]"
            self.teachers = [dict(zip(("path", "weight"), t.split("@"))) for t in self.teachers.split(",")]
        if not self.teachers:
            raise ValueError("DistillConfig.teachers: give at least one teacher pipeline folder")
        teachers = []
        for t in self.teachers:
            t = {"path": t} if isinstance(t, str) else dict(t)
            if set(t) - {"path", "weight"} or "path" not in t:
                raise ValueError(f"DistillConfig.teachers: each entry is {{path, weight}}; got {t}")
            t["weight"] = float(t.get("weight", 1.0))
            if not (Path(t["path"]) / "model_index.json").exists():
                raise ValueError(f"DistillConfig.teachers: {t['path']!r} is not a diffusers pipeline folder "
                                 f"(no model_index.json)")
            if t["weight"] <= 0:
                raise ValueError(f"DistillConfig.teachers: weight must be > 0; got {t['weight']} for {t['path']}")
            teachers.append(t)
        self.teachers = teachers
        if self.student not in RECIPES and not Path(self.student).is_dir():
            raise ValueError(f"DistillConfig.student: {self.student!r} is neither a recipe ({', '.join(RECIPES)}) "
                             f"nor an existing student folder")
        if self.student_keep not in ("spread", "first"):
            raise ValueError(f"DistillConfig.student_keep must be 'spread' or 'first'; got {self.student_keep!r}")
        if self.dataset == "demo":
            if self.dataset_count < 1:
                raise ValueError(f"DistillConfig.dataset_count must be >= 1; got {self.dataset_count}")
        elif not self.dataset.startswith("hf:") and not (Path(self.dataset) / "metadata.jsonl").exists():
            raise ValueError(f"DistillConfig.dataset: {self.dataset!r} is not 'demo', 'hf:<name>' or an imagefolder "
                             f"with metadata.jsonl")
        if not self.buckets or any(len(b) != 2 or any(not isinstance(v, int) or v < 8 or v % 8 for v in b)
                                   for b in self.buckets):
            raise ValueError(f"DistillConfig.buckets: each bucket is [width, height], positive multiples of 8; "
                             f"got {self.buckets}")
        self.buckets = [list(b) for b in self.buckets]
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"DistillConfig.caption_dropout must be in [0, 1); got {self.caption_dropout}")
        for name in ("noise_offset", "lambda_task", "lambda_out", "lambda_feat", "validation_guidance"):
            if getattr(self, name) < 0:
                raise ValueError(f"DistillConfig.{name} must be >= 0; got {getattr(self, name)}")
        if not (self.lambda_task or self.lambda_out or self.lambda_feat):
            raise ValueError("DistillConfig.lambda_task/lambda_out/lambda_feat: at least one must be > 0")
        if self.feature_level not in FEATURE_LEVELS:
            raise ValueError(f"DistillConfig.feature_level must be one of {FEATURE_LEVELS}; got {self.feature_level!r}")
        if any(not isinstance(v, (int, float)) or v < 0 for v in self.feature_weights.values()):
            raise ValueError(f"DistillConfig.feature_weights: weights must be numbers >= 0; got {self.feature_weights}")
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
        if self.validation_steps < 1:
            raise ValueError(f"DistillConfig.validation_steps must be >= 1; got {self.validation_steps}")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> DistillConfig:
    """A DistillConfig from a TOML or JSON file plus ``overrides`` by field name."""
    data = read_config_file(path) if path is not None else {}
    return DistillConfig.from_dict({**data, **(overrides or {})})
