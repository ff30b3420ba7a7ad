"""LoraTrainConfig: what a LoRA run adapts (base model, data, adapter shape); run by
``python -m training.lora --config <file>``. Also the names of what a run writes (the job runner reads them).

    cfg = LoraTrainConfig.load("configs/lora-demo-orange.toml", {"steps": 50})
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from studio.demo.concepts import CONCEPTS
from studio.lora import LORA_WEIGHT_NAME, lora_weight_file  # noqa: F401 (re-exported for training)
from studio.train_config.base import (FRACTION, SAVE_DTYPES, Bound, TrainConfig, check_buckets, check_dataset,
                                      check_model, check_text_list, counts, require_text, weights)

CONFIG_NAME = "lora_config.json"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection (diffusers' default)
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class LoraTrainConfig(TrainConfig):
    """What to adapt (the optimisation fields come from TrainConfig). Saved beside and inside every output."""

    base_model: str = "demo-teacher"  # registry name (students included) or a local pipeline / UNet folder
    dataset: str = ""  # imagefolder with metadata.jsonl, "hf:<name or path>", or "demo:<concept>" (demo family)
    caption_column: str = "text"  # metadata column holding the caption
    rank: int = 4  # LoRA rank r (> 0)
    alpha: float = 0.0  # lora_alpha; the update is scaled by alpha / rank; 0 = rank (scale 1, diffusers' default)
    dropout: float = 0.0  # lora_dropout on the adapter input
    target_modules: list = field(default_factory=lambda: list(UNET_TARGETS))  # UNet module names (peft suffixes)
    exclude_modules: str = ""  # regex (peft full match) of UNet modules to leave out, e.g. ".*down_blocks\\.1\\..*"
    train_text_encoder: bool = False  # also add LoRA to both text encoders
    text_target_modules: list = field(default_factory=lambda: list(TEXT_TARGETS))
    init_lora: str = ""  # start from this LoRA (file or folder; same rank and targets)
    buckets: list = field(default_factory=lambda: [[64, 64]])  # (width, height) training resolutions
    cache_latents: bool = True  # encode every image once (VAE frozen)
    cache_text: bool = True  # encode every caption once (text encoders frozen; not used with train_text_encoder)
    cache_dir: str = ""  # also keep the latent and caption caches on disk here (captions memory-mapped)
    caption_dropout: float = 0.0  # rows trained unconditionally (zero embedding)
    noise_offset: float = 0.0
    snr_gamma: float = 0.0  # Min-SNR-gamma loss weighting; 0 = off (5 recommended)
    kd_teacher: str = ""  # also match this model's prediction (output KD), e.g. a student learning its teacher's LoRA
    kd_teacher_lora: str = ""  # LoRA fused into kd_teacher first (file or folder)
    kd_weight: float = 0.0  # weight of MSE(prediction, kd_teacher's prediction); > 0 needs kd_teacher
    save_dtype: str = "fp32"  # dtype of the exported LoRA file ("fp32" | "fp16" | "bf16"); checkpoints stay fp32
    validation_prompts: list = field(default_factory=list)  # rendered every validate_every steps
    validation_steps: int = 20  # sampler steps of the validation images
    validation_guidance: float = 0.0  # CFG scale; 0 = the base model's default
    output_dir: str = "outputs/models/loras/lora"  # under the models dir, so the Generate tab lists it

    BOUNDS: ClassVar = {"rank": counts(1024, 1), "alpha": weights(10_000), "dropout": FRACTION,
                        "kd_weight": weights(), "caption_dropout": FRACTION, "noise_offset": Bound(0, 10),
                        "snr_gamma": weights(), "validation_steps": counts(150, 1),
                        "validation_guidance": Bound(0, 30)}
    PATH_FIELDS: ClassVar = {**TrainConfig.PATH_FIELDS, "base_model": "model", "dataset": "dataset",
                             "init_lora": "read", "cache_dir": "write", "kd_teacher": "model",
                             "kd_teacher_lora": "read"}
    SIZES: ClassVar = {"buckets": 64, "validation_prompts": 64}
    SHORTHAND: ClassVar = frozenset({"target_modules", "text_target_modules"})
    CHOICES: ClassVar = {"save_dtype": SAVE_DTYPES}
    SUGGESTIONS: ClassVar = {"dataset": tuple(f"demo:{c}" for c in CONCEPTS)}
    FORM: ClassVar = ("base_model", "dataset", "rank", "alpha", "dropout", "train_text_encoder", "snr_gamma",
                      "caption_dropout", "save_dtype")

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        check_model(self, "base_model")
        if not self.dataset:
            raise ValueError(f"{name}.dataset: give an imagefolder (metadata.jsonl), 'hf:<name>' or 'demo:<concept>'")
        if self.dataset.startswith("demo:"):
            if self.dataset[5:] not in CONCEPTS:
                raise ValueError(f"{name}.dataset: unknown demo concept {self.dataset[5:]!r}; "
                                 f"allowed: {', '.join('demo:' + c for c in CONCEPTS)}")
        elif not self.dataset.startswith("hf:"):
            check_dataset(self, "'hf:<dataset name>' or 'demo:<concept>'")
        for field_name in ("target_modules", "text_target_modules"):
            value = getattr(self, field_name)
            if isinstance(value, str):  # CLI shorthand: "to_q,to_k"
                value = [v.strip() for v in value.split(",") if v.strip()]
                setattr(self, field_name, value)
            if not value or len(value) > 256 or not all(isinstance(v, str) and v and len(v) <= 200 for v in value):
                raise ValueError(f"{name}.{field_name} must be a non-empty list of at most 256 module names; got "
                                 f"{str(value)[:200]}")
        if not isinstance(self.exclude_modules, str):
            raise ValueError(f"{name}.exclude_modules must be a regex string ('' = none); got {self.exclude_modules!r}")
        if self.exclude_modules:
            try:
                re.compile(self.exclude_modules)
            except re.error as err:
                raise ValueError(f"{name}.exclude_modules: bad regex {self.exclude_modules!r} ({err})") from None
        if self.kd_weight and not self.kd_teacher:
            raise ValueError(f"{name}.kd_teacher: kd_weight {self.kd_weight} needs a teacher model to match")
        if self.kd_teacher:
            check_model(self, "kd_teacher")
        if self.kd_teacher_lora and not lora_weight_file(self.kd_teacher_lora).exists():
            raise ValueError(f"{name}.kd_teacher_lora: {self.kd_teacher_lora!r} does not exist")
        if self.init_lora and not Path(self.init_lora).exists():
            raise ValueError(f"{name}.init_lora: {self.init_lora!r} does not exist")
        check_buckets(self)
        check_text_list(self, "validation_prompts")
        require_text(name, "caption_column", self.caption_column, 64)

    @property
    def lora_alpha(self) -> float:
        return self.alpha or float(self.rank)

