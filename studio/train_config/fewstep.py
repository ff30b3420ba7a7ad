"""FewStepConfig: what a few-step run trains (latent consistency distillation, full or LoRA; single-stage conditional
distillation and its baselines); run by ``python -m training.fewstep --config <file>``.

    cfg = FewStepConfig.load("configs/fewstep-demo-lcm.toml", {"steps": 10})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from studio.fewstep import ADAPTER_FOLDERS
from studio.schedulers import CONSISTENCY_SAMPLERS
from studio.train_config.base import (FRACTION, SAVE_DTYPES, Bound, TrainConfig, check_dataset, check_model, counts,
                                      weights)

STUDENTS = ("full", "lora")
OBJECTIVES = ("lcd", "codi", "task")
LOSSES = ("huber", "l2")
CONDITIONS = ("", "sr")
ADAPTERS = tuple(ADAPTER_FOLDERS)  # "controlnet" | "t2i-adapter": diffusers' ControlNetModel / T2IAdapter
CODI_SOLVERS = ("noise", "student")
# LCM-LoRA's targets (diffusers' train_lcm_distill_lora_sdxl.py): attention, transformer projections and feed-forward,
# every resnet conv and time projection, the resamplers
LCM_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                    "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


@dataclass
class FewStepConfig(TrainConfig):
    """What to make few-step (the optimisation fields come from TrainConfig). Saved in every checkpoint and output.

    ``objective`` "lcd": latent consistency distillation (arXiv 2310.04378): one DDIM step of the frozen teacher with
    classifier-free guidance over the skipping schedule is the ODE solver. "codi": single-stage conditional
    distillation (CoDi, arXiv 2310.01407): the conditional student is its own solver (``codi_solver``: its DDIM step,
    or its x0 prediction with the true noise) for the next point, plus the denoising loss. "task": the plain epsilon
    loss alone (the undistilled conditional baseline).
    """

    teacher: str = "demo-teacher"  # registry name or local folder: the frozen model (solver, and backbone of lora)
    base_name: str = ""  # registry name written to studio_model.json as "base" ("" = teacher)
    student: str = "lora"  # "full": whole UNet with time_cond_proj_dim (guidance input); "lora": adapters on a frozen UNet
    student_base: str = ""  # model whose UNet the student starts from / carries the LoRA ("" = the teacher's)
    objective: str = "lcd"  # "lcd" | "codi" | "task", see the class docstring
    condition: str = ""  # "" text-to-image; "sr": the adapter sees the condition_size^2 downsample
    adapter: str = "controlnet"  # condition adapter: "controlnet" (zero-initialised outputs) | "t2i-adapter"
    condition_size: int = 16  # side of the low-resolution condition image ("sr")
    init_from: str = ""  # conditional model folder to start from; with "lcd" also the frozen teacher (two-stage)
    num_ddim_timesteps: int = 50  # N of the skipping schedule; skipping interval k = num_train_timesteps // N
    guidance_min: float = 3.0  # CFG scale range of the solver (LCM's w = scale - 1), sampled per example
    guidance_max: float = 8.0
    time_cond_proj_dim: int = 256  # full student: width of the guidance-scale embedding
    loss: str = "huber"  # "huber" (pseudo-Huber, elementwise) | "l2"
    huber_c: float = 0.001
    target_decay: float = 0.95  # EMA rate of the target network; 0 = the online student under no_grad (LCM-LoRA)
    # "codi": how the next point is reached: "noise" = the student's x0 re-noised with the true noise, "student" = the
    # student's own DDIM step (its x0 and epsilon: the conditional model as its own ODE solver)
    codi_solver: str = "noise"
    lambda_task: float = 1.0  # "codi": weight of the denoising (epsilon / v MSE) term beside the consistency term
    rank: int = 16  # LoRA rank ("lora"; 0 with a condition = train the adapter only)
    alpha: float = 0.0  # lora_alpha; 0 = rank (scale 1)
    target_modules: list = field(default_factory=lambda: list(LCM_LORA_TARGETS))
    # ControlNet condition-encoder widths (a T2I-Adapter's widths are the UNet's own)
    adapter_channels: list = field(default_factory=lambda: [16, 32, 32])
    dataset: str = "demo"  # "demo" (synthetic shapes) or an imagefolder with metadata.jsonl
    dataset_count: int = 2048  # images drawn from the demo generator
    caption_column: str = "text"
    resolution: int = 64  # square training size in pixels
    caption_dropout: float = 0.0  # rows trained with the zero (unconditional) text embedding
    cache_dir: str = ""  # also keep the latent cache on disk here
    inference_steps: int = 4  # recommended sampler steps (written to the output) and validation steps
    # recommended sampler of a distilled output: "LCM" (fresh noise each step, LCM's own) or "TCD" (at the pipelines'
    # eta 0: gamma 0, the deterministic multistep consistency sampler)
    inference_scheduler: str = "LCM"
    inference_guidance: float = 0.0  # recommended guidance scale; 0 = 1.0 for LoRA/conditional, the range's middle for full
    save_dtype: str = "fp16"  # dtype of the exported weights
    validation_prompts: list = field(default_factory=lambda: [
        "a red circle on a blue background", "a yellow star on a black background",
        "a white square on a green background", "a cyan cross on a purple background"])
    output_dir: str = "outputs/fewstep"
    BOUNDS: ClassVar = {"condition_size": counts(4096, 1), "num_ddim_timesteps": counts(1000, 2),
                        "guidance_min": Bound(0, 30), "guidance_max": Bound(0, 30),
                        "time_cond_proj_dim": counts(4096, 2), "huber_c": Bound(0, 1, low_open=True),
                        "target_decay": FRACTION, "lambda_task": weights(), "rank": counts(1024),
                        "alpha": weights(10_000), "dataset_count": counts(low=1), "resolution": counts(4096, 8),
                        "caption_dropout": FRACTION, "inference_steps": counts(1000, 1),
                        "inference_guidance": Bound(0, 30)}
    CHOICES: ClassVar = {"student": STUDENTS, "objective": OBJECTIVES, "loss": LOSSES, "condition": CONDITIONS,
                         "adapter": ADAPTERS, "codi_solver": CODI_SOLVERS, "save_dtype": SAVE_DTYPES,
                         "inference_scheduler": CONSISTENCY_SAMPLERS}
    PATH_FIELDS: ClassVar = {**TrainConfig.PATH_FIELDS, "teacher": "model", "student_base": "model",
                             "init_from": "read", "dataset": "dataset", "cache_dir": "write"}
    SIZES: ClassVar = {"adapter_channels": 8, "validation_prompts": 64}
    SHORTHAND: ClassVar = frozenset({"target_modules"})

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        check_model(self, "teacher")
        if self.student_base:
            check_model(self, "student_base")
        if self.init_from and not (Path(self.init_from) / "studio_model.json").exists():
            raise ValueError(f"{name}.init_from: {self.init_from!r} is not a few-step/conditional model folder "
                             f"(no studio_model.json)")
        if self.inference_steps > self.num_ddim_timesteps:
            raise ValueError(f"{name}.inference_steps must be an integer in [1, num_ddim_timesteps="
                             f"{self.num_ddim_timesteps}] (LCMScheduler picks them from the skipping schedule); "
                             f"got {self.inference_steps!r}")
        if not 1 <= self.guidance_min <= self.guidance_max <= 30:
            raise ValueError(f"{name}.guidance_min/guidance_max: need 1 <= guidance_min <= guidance_max <= 30 (CFG "
                             f"scales); got {self.guidance_min}, {self.guidance_max}")
        if self.time_cond_proj_dim % 2:
            raise ValueError(f"{name}.time_cond_proj_dim must be an even integer >= 2; got {self.time_cond_proj_dim!r}")
        if isinstance(self.target_modules, str):  # CLI shorthand: "to_q,to_k"
            self.target_modules = [v.strip() for v in self.target_modules.split(",") if v.strip()]
        if self.student == "lora" and self.rank and not self.target_modules:
            raise ValueError(f"{name}.target_modules must name at least one UNet module for the LoRA")
        if self.condition:
            if self.student != "lora":
                raise ValueError(f"{name}.student must be 'lora' with a condition (frozen backbone + LoRA + adapter, "
                                 f"CoDi's parameter-efficient form); got {self.student!r}")
            if not 4 <= self.condition_size < self.resolution:
                raise ValueError(f"{name}.condition_size must be in [4, resolution={self.resolution}); "
                                 f"got {self.condition_size}")
            if len(self.adapter_channels) < 1 or any(not isinstance(c, int) or c < 1 for c in self.adapter_channels):
                raise ValueError(f"{name}.adapter_channels: positive integer widths, one per 2x downsampling + 1; "
                                 f"got {self.adapter_channels}")
            if self.objective == "lcd" and not self.init_from:
                raise ValueError(f"{name}.init_from: conditional 'lcd' (the two-stage order) distils a trained "
                                 f"conditional model; give its folder (made with objective 'task')")
        else:
            if self.objective != "lcd":
                raise ValueError(f"{name}.objective {self.objective!r} needs a condition (condition = 'sr'); "
                                 f"text-to-image few-step students use 'lcd'")
            if self.init_from:
                raise ValueError(f"{name}.init_from is for conditional models (condition = 'sr')")
            if self.student == "lora" and not self.rank:
                raise ValueError(f"{name}.rank must be >= 1 for an LCM-LoRA")
        if not isinstance(self.resolution, int) or self.resolution < 16 or self.resolution % 8:
            raise ValueError(f"{name}.resolution must be a multiple of 8, >= 16; got {self.resolution!r}")
        if self.dataset != "demo":
            check_dataset(self, "'demo' (the synthetic shapes)")
        if self.dataset_count < 1:
            raise ValueError(f"{name}.dataset_count must be >= 1; got {self.dataset_count}")

    @property
    def lora_alpha(self) -> float:
        return self.alpha or float(self.rank)

    @property
    def recommended_guidance(self) -> float:
        """Guidance scale written to the output: LoRA and conditional students run without CFG (1.0); a full student
        takes the scale as an input (the pipeline embeds scale - 1), by default the middle of the trained range."""
        if self.inference_guidance:
            return self.inference_guidance
        if self.student == "full":
            return round((self.guidance_min + self.guidance_max) / 2, 2)
        return 1.0
