"""LoRA fine-tuning of an SDXL-family model (its UNet, optionally both text encoders) with peft, on the shared Trainer.

    python -m training.lora --config configs/lora-demo-heart.toml --set steps=200      # or --steps 200
    accelerate launch -m training.lora --config configs/lora-demo-heart.toml
    python -m training.lora demo data --concept orange --out data/lora-orange   # new concept; `demo eval` scores

The base model is any registry name (students included: a UNet-only student gets its base's text encoders and VAE
through ``studio.loading.ModelCache``) or a local folder. Base weights stay frozen; peft ``LoraConfig`` adapters
(``unet.add_adapter``; Hu et al. 2021, arXiv 2106.09685; init "gaussian" = B zero, so step 0 is the base model) are
the only parameters the optimizer sees. Loss: MSE to the scheduler's target (epsilon or v) on the noisy VAE latent,
optional Min-SNR-gamma weighting (arXiv 2303.09556) and offset noise, as diffusers' ``train_text_to_image_lora_sdxl``.
Output: ``<output_dir>/pytorch_lora_weights.safetensors`` in diffusers format (``StableDiffusionXLPipeline.
save_lora_weights``; keys ``unet.`` / ``text_encoder.`` / ``text_encoder_2.``, peft adapter metadata so alpha != rank
survives, the training config in the safetensors header) plus ``lora_config.json``; plain diffusers loads it with
``pipe.load_lora_weights(output_dir)``. Checkpoints hold the adapter weights only (same file) plus optimizer state.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from training.trainer import TrainConfig, Trainer, cli_parser, read_config_file, run_with_progress, trainer_from_cli

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CONFIG_NAME = "lora_config.json"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection (diffusers' default)
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
PREFIXES = ("unet", "text_encoder", "text_encoder_2")
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- config

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
    cache_dir: str = ""  # also keep the latent cache on disk here
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

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise ValueError(f"{name}.base_model: give a registry name or a local model folder")
        from studio.loading import resolve_spec

        try:
            resolve_spec(self.base_model)
        except ValueError as err:
            raise ValueError(f"{name}.base_model: {err}") from None
        if not self.dataset:
            raise ValueError(f"{name}.dataset: give an imagefolder (metadata.jsonl), 'hf:<name>' or 'demo:<concept>'")
        if self.dataset.startswith("demo:"):
            if self.dataset[5:] not in CONCEPTS:
                raise ValueError(f"{name}.dataset: unknown demo concept {self.dataset[5:]!r}; "
                                 f"allowed: {', '.join('demo:' + c for c in CONCEPTS)}")
        elif not self.dataset.startswith("hf:") and not (Path(self.dataset) / "metadata.jsonl").exists():
            raise ValueError(f"{name}.dataset: {self.dataset!r} is not an imagefolder with metadata.jsonl "
                             f"(lines {{\"file_name\": ..., \"{self.caption_column}\": ...}}), 'hf:<name>' "
                             f"nor 'demo:<concept>'")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ValueError(f"{name}.rank must be an integer > 0; got {self.rank!r}")
        if self.alpha < 0:
            raise ValueError(f"{name}.alpha must be >= 0 (0 = rank); got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{name}.dropout must be in [0, 1); got {self.dropout}")
        for field_name in ("target_modules", "text_target_modules"):
            value = getattr(self, field_name)
            if isinstance(value, str):  # CLI shorthand: "to_q,to_k"
                value = [v.strip() for v in value.split(",") if v.strip()]
                setattr(self, field_name, value)
            if not value or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name}.{field_name} must be a non-empty list of module names; got {value!r}")
        if not isinstance(self.exclude_modules, str):
            raise ValueError(f"{name}.exclude_modules must be a regex string ('' = none); got {self.exclude_modules!r}")
        if self.exclude_modules:
            import re

            try:
                re.compile(self.exclude_modules)
            except re.error as err:
                raise ValueError(f"{name}.exclude_modules: bad regex {self.exclude_modules!r} ({err})") from None
        if self.kd_weight < 0:
            raise ValueError(f"{name}.kd_weight must be >= 0 (0 = no teacher); got {self.kd_weight}")
        if self.kd_weight and not self.kd_teacher:
            raise ValueError(f"{name}.kd_teacher: kd_weight {self.kd_weight} needs a teacher model to match")
        if self.kd_teacher:
            try:
                resolve_spec(self.kd_teacher)
            except ValueError as err:
                raise ValueError(f"{name}.kd_teacher: {err}") from None
        if self.kd_teacher_lora and not lora_weight_file(self.kd_teacher_lora).exists():
            raise ValueError(f"{name}.kd_teacher_lora: {self.kd_teacher_lora!r} does not exist")
        if self.init_lora and not Path(self.init_lora).exists():
            raise ValueError(f"{name}.init_lora: {self.init_lora!r} does not exist")
        if not self.buckets or any(len(b) != 2 or any(not isinstance(v, int) or v < 8 or v % 8 for v in b)
                                   for b in self.buckets):
            raise ValueError(f"{name}.buckets: each bucket is [width, height], positive multiples of 8; "
                             f"got {self.buckets}")
        self.buckets = [list(b) for b in self.buckets]
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"{name}.caption_dropout must be in [0, 1); got {self.caption_dropout}")
        for field_name in ("noise_offset", "snr_gamma", "validation_guidance"):
            if getattr(self, field_name) < 0:
                raise ValueError(f"{name}.{field_name} must be >= 0; got {getattr(self, field_name)}")
        if self.validation_steps < 1:
            raise ValueError(f"{name}.validation_steps must be >= 1; got {self.validation_steps}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"{name}.save_dtype must be one of {tuple(SAVE_DTYPES)}; got {self.save_dtype!r}")

    @property
    def lora_alpha(self) -> float:
        return self.alpha or float(self.rank)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> LoraTrainConfig:
    """A LoraTrainConfig from a TOML or JSON file plus ``overrides`` by field name (a saved config.json works)."""
    data = read_config_file(path) if path is not None else {}
    return LoraTrainConfig.from_dict({**data, **(overrides or {})})


# ---------------------------------------------------------------- base model and LoRA files

def load_base(name_or_path: str):
    """A fresh fp32 CPU StableDiffusionXLPipeline for ``name_or_path`` (UNet-only students get their base's parts)."""
    from diffusers import StableDiffusionXLPipeline

    from studio.loading import ModelCache, Runtime, resolve_spec
    from studio.registry import ModelSpec, _read_spec_file

    spec = resolve_spec(name_or_path)
    path = Path(name_or_path)
    if path.is_dir() and not (path / "model_index.json").exists() and _read_spec_file(path).get("base"):
        spec = ModelSpec(spec.name, spec.source, base=_read_spec_file(path)["base"])  # the folder names its base
    cache = ModelCache(budget_bytes=1 << 62, runtime=Runtime(torch.device("cpu"), torch.float32))
    pipe = cache.get(spec)
    pipe = StableDiffusionXLPipeline(**{k: v for k, v in pipe.components.items() if k in (
        "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_teacher(name_or_path: str, lora: str = ""):
    """The frozen UNet of ``name_or_path`` with ``lora`` fused into its weights (output-KD target of a LoRA run)."""
    pipe = load_base(name_or_path)
    if lora:
        pipe.load_lora_weights(str(lora_weight_file(lora)), adapter_name="teacher")
        pipe.fuse_lora(adapter_names=["teacher"], lora_scale=1.0)
        pipe.unload_lora_weights()
    return pipe.unet.requires_grad_(False).eval()


def lora_weight_file(path: str | Path) -> Path:
    path = Path(path)
    return path / LORA_WEIGHT_NAME if path.is_dir() else path


def save_lora(folder: str | Path, unet, text_encoders=(), *, config: dict | None = None,
              dtype: torch.dtype = torch.float32) -> Path:
    """Write the ``default`` adapters of ``unet`` (and text encoders) in diffusers format, as ``dtype``; returns
    the file. UNet keys stay in peft's ``lora_A`` / ``lora_B`` naming, which ``load_lora_weights`` reads for every
    layer type (converting only the attention ones to the older ``lora.down`` naming would make a mixed file whose
    attention adapters diffusers silently drops, e.g. an LCM-LoRA on convolutions and attention)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import save_file

    def layers(model):
        state = get_peft_model_state_dict(model, adapter_name="default")
        if model is not unet:
            state = convert_state_dict_to_diffusers(state)
        return {k: v.detach().to(dtype) for k, v in state.items()}

    def meta(model):
        return model.peft_config["default"].to_dict()

    kwargs = dict(unet_lora_layers=layers(unet), unet_lora_adapter_metadata=meta(unet))
    for name, te in zip(("text_encoder", "text_encoder_2"), text_encoders):
        kwargs |= {f"{name}_lora_layers": layers(te), f"{name}_lora_adapter_metadata": meta(te)}
    folder = Path(folder)
    StableDiffusionXLPipeline.save_lora_weights(folder, **kwargs, weight_name=LORA_WEIGHT_NAME,
                                                safe_serialization=True)
    file = folder / LORA_WEIGHT_NAME
    if config is not None:  # the training config inside the artifact, next to diffusers' adapter metadata
        with safe_open(str(file), framework="pt") as fh:
            header, tensors = dict(fh.metadata() or {}), {k: fh.get_tensor(k) for k in fh.keys()}
        save_file(tensors, str(file), metadata=header | {"studio_lora_config": json.dumps(config)})
    return file


def load_lora_into(path: str | Path, unet, text_encoders=()) -> None:
    """Copy a diffusers-format LoRA file (ours: a checkpoint, an output, ``init_lora``) into the ``default``
    adapters of ``unet`` / text encoders; ValueError for a corrupt file or one made for another architecture.
    Text-encoder adapters the file does not have keep their fresh initialisation (a UNet LoRA as ``init_lora`` of a
    run that adds text-encoder LoRA)."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = lora_weight_file(path)
    try:
        state = load_file(str(file))
    except Exception as err:
        raise ValueError(f"LoRA {str(path)!r} is not a valid .safetensors file ({err})") from err
    models = dict(zip(PREFIXES, (unet, *text_encoders)))
    unknown = sorted({k.split(".")[0] for k in state} - set(models))
    if unknown or not state:
        raise ValueError(f"LoRA {str(path)!r} has no weights for this run's adapters (prefixes {unknown or 'none'}; "
                         f"expected {list(models)})")
    for prefix, model in models.items():
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if not sub and prefix != "unet":
            continue
        sub = convert_unet_state_dict_to_peft(sub) if prefix == "unet" else \
            convert_state_dict_to_peft(convert_state_dict_to_diffusers(sub))
        try:
            result = set_peft_model_state_dict(model, sub, adapter_name="default")
        except RuntimeError as err:
            raise ValueError(f"LoRA {str(path)!r} does not fit this model's architecture or rank ({prefix}): "
                             f"{str(err).splitlines()[0]}") from err
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise ValueError(f"LoRA {str(path)!r} does not fit this model's architecture or targets ({prefix}): "
                             f"{len(result.unexpected_keys)} unexpected and {len(missing)} missing LoRA tensors, e.g. "
                             f"{(list(result.unexpected_keys) + missing)[:2]}")


def port_lora(lora: str | Path, student: str | Path, out_dir: str | Path) -> Path:
    """A teacher's LoRA re-keyed for a student made by the layer-removal engine: every kept student module gets the
    adapter of the teacher module it was copied from (``name_map.json``, student -> teacher), adapters of removed
    modules are dropped. Loading the teacher's file as is would pair renumbered layers by name (student
    transformer layer 1 is teacher layer 3 in the SSD-1B recipe). Text-encoder adapters are copied unchanged."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from studio.loading import resolve_spec
    from studio.removal import map_key

    folder = Path(student)
    if not folder.is_dir():
        folder = Path(resolve_spec(str(student)).source)
    map_file = folder / "name_map.json"
    if not map_file.exists():
        raise ValueError(f"student {str(student)!r} has no name_map.json (only students exported by the layer-removal "
                         f"engine or the distillation trainer can take a teacher's LoRA)")
    teacher_to_student = {}
    for student_prefix, teacher_prefix in json.loads(map_file.read_text()).items():
        if teacher_to_student.setdefault(teacher_prefix, student_prefix) != student_prefix:
            raise ValueError(f"{map_file}: teacher module {teacher_prefix} feeds two student modules")
    file = lora_weight_file(lora)
    try:
        with safe_open(str(file), framework="pt") as fh:
            header, tensors = dict(fh.metadata() or {}), {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:
        raise ValueError(f"LoRA {str(lora)!r} is not a valid .safetensors file ({err})") from err
    ported = {}
    for key, value in tensors.items():
        if not key.startswith("unet."):
            ported[key] = value
            continue
        try:
            ported["unet." + map_key(key[5:], teacher_to_student)] = value
        except KeyError:  # a module the student removed
            continue
    kept = sum(k.startswith("unet.") for k in ported)
    if not kept:
        raise ValueError(f"LoRA {str(lora)!r}: none of its UNet adapters is on a module the student kept")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header["studio_ported_from"] = json.dumps({"lora": str(file), "student": str(folder),
                                               "unet_tensors_kept": kept,
                                               "unet_tensors_dropped": sum(k.startswith("unet.") for k in tensors)
                                               - kept})
    save_file(ported, str(out / LORA_WEIGHT_NAME), metadata=header)
    return out / LORA_WEIGHT_NAME


# ---------------------------------------------------------------- the LoRA task

class LoraModules(torch.nn.Module):
    """What the Trainer optimises: the UNet (and text encoders) carrying the adapters; forward = noise prediction.
    With text-encoder LoRA the captions are encoded inside forward, with gradients."""

    def __init__(self, pipe, train_text_encoder: bool):
        super().__init__()
        self.unet = pipe.unet
        self.text_encoders = torch.nn.ModuleList([pipe.text_encoder, pipe.text_encoder_2] if train_text_encoder
                                                 else [])
        self._encode_prompt = pipe.encode_prompt  # a bound method, not a submodule

    def enable_gradient_checkpointing(self):
        self.unet.enable_gradient_checkpointing()
        for te in self.text_encoders:
            te.gradient_checkpointing_enable()

    def forward(self, noisy, t, batch: dict):
        embeds, pooled = batch["prompt_embeds"], batch["pooled"]
        if len(self.text_encoders):
            keep = (pooled.abs().sum(-1) > 0).to(noisy.dtype)  # dropped captions arrive as zero embeddings
            embeds, _, pooled, _ = self._encode_prompt(batch["captions"], device=noisy.device,
                                                       do_classifier_free_guidance=False)
            embeds, pooled = embeds * keep[:, None, None], pooled * keep[:, None]
        cond = {"text_embeds": pooled, "time_ids": batch["time_ids"]}
        return self.unet(noisy, t, encoder_hidden_states=embeds, added_cond_kwargs=cond).sample


class LoraTask:
    """Base pipeline + peft adapters + data + the denoising loss; plugs into ``training.trainer.Trainer``."""

    def __init__(self, cfg: LoraTrainConfig, *, device: torch.device | str = "cpu", process_index: int = 0,
                 items: list | None = None):
        from diffusers import DDPMScheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        from training.data import SDXLBatches, load_items

        self.cfg, self.device, self.process_index = cfg, torch.device(device), process_index
        self.pipe = pipe = load_base(cfg.base_model)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            m.requires_grad_(False).eval()
        self.base_params = sum(p.numel() for p in pipe.unet.parameters())
        self.text_encoders = [pipe.text_encoder, pipe.text_encoder_2] if cfg.train_text_encoder else []
        if cfg.train_text_encoder:
            _check_text_encoder_lora_support()
        targets = [(pipe.unet, cfg.target_modules, cfg.exclude_modules or None)]
        targets += [(te, cfg.text_target_modules, None) for te in self.text_encoders]
        for model, modules, exclude in targets:
            try:
                model.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.dropout,
                                             init_lora_weights="gaussian", target_modules=list(modules),
                                             exclude_modules=exclude))
            except ValueError as err:
                raise ValueError(f"LoraTrainConfig target modules {list(modules)} do not fit "
                                 f"{type(model).__name__} of {cfg.base_model!r}: {err}") from err
        if cfg.init_lora:
            load_lora_into(cfg.init_lora, pipe.unet, self.text_encoders)
        low = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision)
        frozen_dtype = low if low is not None and self.device.type == "cuda" else torch.float32
        for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
            m.to(self.device)
            if frozen_dtype != torch.float32:
                m.to(frozen_dtype)
        cast_training_params([pipe.unet, *self.text_encoders], torch.float32)  # adapters train in fp32
        pipe.vae.to(self.device)
        self.teacher = None
        if cfg.kd_weight:
            self.teacher = load_teacher(cfg.kd_teacher, cfg.kd_teacher_lora).to(self.device, frozen_dtype)
        self.model = LoraModules(pipe, cfg.train_text_encoder)
        self.lora_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.guidance = cfg.validation_guidance or _default_guidance(cfg.base_model)
        if items is None:
            items = (concept_items(cfg.dataset) if cfg.dataset.startswith("demo:")
                     else load_items(cfg.dataset, caption_column=cfg.caption_column))
        empty = [str(it.image) for it in items if not str(it.text).strip()]
        if empty:
            raise ValueError(f"dataset {cfg.dataset!r}: {len(empty)} image(s) have an empty "
                             f"'{cfg.caption_column}' caption, e.g. {empty[:2]}")
        self.data = SDXLBatches(items, pipe, buckets=[tuple(b) for b in cfg.buckets], cache_latents=cfg.cache_latents,
                                cache_text=cfg.cache_text or cfg.train_text_encoder, cache_dir=cfg.cache_dir or None,
                                caption_dropout=cfg.caption_dropout, device=self.device)

    # checkpoints: adapter weights only (accelerate hooks), in the output's format
    def register_hooks(self, accelerator) -> None:
        def save_hook(models, weights, output_dir):
            if weights:
                weights.pop()  # the full model state: the LoRA file below replaces it
            if accelerator.is_main_process:
                save_lora(output_dir, self.pipe.unet, self.text_encoders)

        def load_hook(models, input_dir):
            if models:
                models.pop()
            load_lora_into(input_dir, self.pipe.unet, self.text_encoders)

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    # loss
    def loss(self, model, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        from diffusers.training_utils import compute_snr

        from training.data import SDXLBatches, add_training_noise

        cfg = self.cfg
        gen = SDXLBatches.generator(cfg.seed, step, micro, self.process_index)
        batch = self.data.batch(gen, cfg.batch_size)
        noisy, t, target = add_training_noise(batch["latents"], self.noise_sched, gen,
                                              noise_offset=cfg.noise_offset, device=self.device)
        v_pred = self.noise_sched.config.prediction_type == "v_prediction"
        pred = model(noisy, t, batch)
        if not cfg.snr_gamma:
            loss, scalars = F.mse_loss(pred.float(), target.float()), {}
        else:
            snr = compute_snr(self.noise_sched, t)
            weight = torch.clamp(snr, max=cfg.snr_gamma) / (snr + 1 if v_pred else snr)
            per_row = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            loss, scalars = (per_row * weight).mean(), {"mse": per_row.mean().item()}
        if self.teacher is not None:  # the teacher sees the frozen encoders' (cached) text embeddings
            dtype = self.teacher.dtype
            with torch.no_grad():
                t_pred = self.teacher(noisy.to(dtype), t, encoder_hidden_states=batch["prompt_embeds"].to(dtype),
                                      added_cond_kwargs={"text_embeds": batch["pooled"].to(dtype),
                                                         "time_ids": batch["time_ids"].to(dtype)}).sample.float()
            kd = F.mse_loss(pred.float(), t_pred)
            loss, scalars = loss + cfg.kd_weight * kd, scalars | {"kd": kd.item()}
        return loss, scalars

    # validation and export
    def render(self, prompts: list[str], *, steps: int | None = None, guidance: float | None = None,
               seed: int | None = None) -> list:
        """Images of ``prompts`` through the base pipeline with the adapters as trained (one seed per prompt)."""
        w, h = self.cfg.buckets[0]
        seed = self.cfg.seed if seed is None else seed
        gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        return self.pipe(list(prompts), num_inference_steps=steps or self.cfg.validation_steps,
                         guidance_scale=self.guidance if guidance is None else guidance, width=w, height=h,
                         generator=gens).images

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        """A row of validation images; evaluator accuracy over the prompts it can parse (demo prompts)."""
        from PIL import Image

        from studio.evaluator import evaluate_batch, parse_prompt

        prompts = list(self.cfg.validation_prompts)
        if not prompts:
            return {}
        out_dir.mkdir(parents=True, exist_ok=True)
        images = self.render(prompts)
        w, h = images[0].size
        grid = Image.new("RGB", (w * len(images), h))
        for i, im in enumerate(images):
            grid.paste(im, (i * w, 0))
        grid.save(out_dir / f"step-{step:06d}.png")
        scored = []
        for im, p in zip(images, prompts):
            try:
                parse_prompt(p)
                scored.append((im, p))
            except ValueError:
                pass
        if not scored:
            return {}
        return {"val_all": evaluate_batch(*map(list, zip(*scored)))["accuracy"]["all"]}

    def export(self, out_dir: Path) -> Path:
        """``<output_dir>/pytorch_lora_weights.safetensors`` + ``lora_config.json`` (``out_dir`` is unused: the
        LoRA sits at the top of the output folder, where diffusers' ``load_lora_weights(output_dir)`` finds it)."""
        folder = Path(self.cfg.output_dir)
        file = save_lora(folder, self.pipe.unet, self.text_encoders, config=self.cfg.to_dict(),
                         dtype=SAVE_DTYPES[self.cfg.save_dtype])
        unet_bytes = sum(p.numel() * p.element_size() for p in self.pipe.unet.parameters()
                         if not p.requires_grad)
        (folder / CONFIG_NAME).write_text(json.dumps(
            {"config": self.cfg.to_dict(), "base_model": self.cfg.base_model, "rank": self.cfg.rank,
             "alpha": self.cfg.lora_alpha, "lora_params": self.lora_params, "unet_params": self.base_params,
             "file_bytes": file.stat().st_size, "unet_bytes": unet_bytes}, indent=1) + "\n")
        return folder


def _check_text_encoder_lora_support() -> None:
    """transformers' peft integration (used to add *and* to load text-encoder LoRAs) may need a newer peft."""
    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION, check_peft_version
    except ImportError:
        return
    try:
        check_peft_version(min_version=MIN_PEFT_VERSION)
    except ValueError as err:
        import peft

        raise ValueError(f"LoraTrainConfig.train_text_encoder: text-encoder LoRA needs peft >= {MIN_PEFT_VERSION} with "
                         f"this transformers (installed: peft {peft.__version__}); diffusers could not load such a "
                         f"LoRA either. Upgrade peft or train the UNet only ({err})") from None


def _default_guidance(name_or_path: str) -> float:
    from studio.loading import resolve_spec

    try:
        return float(resolve_spec(name_or_path).default_guidance)
    except ValueError:
        return 5.0


def make_trainer(cfg: LoraTrainConfig, *, items: list | None = None) -> Trainer:
    """A Trainer wired to a LoraTask on the accelerator's device (checkpoints keep only the adapters)."""
    from training.trainer import make_accelerator

    acc = make_accelerator(cfg)
    task = LoraTask(cfg, device=acc.device, process_index=acc.process_index, items=items)
    task.register_hooks(acc)
    return Trainer(cfg, task, accelerator=acc)


def run_lora(cfg: LoraTrainConfig, *, resume_from: str | None = None, on_step=None, should_stop=None,
             items: list | None = None):
    """Train per ``cfg``; returns the TrainResult (``result.output`` = the folder holding the LoRA file)."""
    return make_trainer(cfg, items=items).run(resume_from=resume_from, on_step=on_step, should_stop=should_stop)


# ---------------------------------------------------------------- demo: concepts the demo family never saw

NEW_SHAPES = ("heart",)  # drawn by heart_polygon
NEW_COLOURS = {"orange": (245, 140, 20)}  # between red and yellow; the demo VAE decodes it on most backgrounds
CONCEPTS = NEW_SHAPES + tuple(NEW_COLOURS)


def heart_polygon(x0: float, y0: float, x1: float, y1: float, points: int = 64) -> list[tuple[float, float]]:
    """Outline of a heart (point down) stretched to the box, from the classic curve x = 16 sin^3 t,
    y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t."""
    import math

    pts = [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
           for t in (2 * math.pi * k / points for k in range(points))]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [(x0 + (px - min(xs)) / (max(xs) - min(xs)) * (x1 - x0),
             y0 + (py - min(ys)) / (max(ys) - min(ys)) * (y1 - y0)) for px, py in pts]


def _check_concept(concept: str) -> None:
    if concept not in CONCEPTS:
        raise ValueError(f"unknown demo concept {concept!r}; choose one of {CONCEPTS}")


def _backgrounds(colour: str) -> list[str]:
    """Palette backgrounds for a new colour: those at least 100 RGB apart (orange on yellow has too little contrast
    for the evaluator to find the shape)."""
    from training import synthetic

    rgb = NEW_COLOURS[colour]
    return [c for c, v in synthetic.PALETTE.items() if sum((a - b) ** 2 for a, b in zip(v, rgb)) ** 0.5 >= 100]


def concept_sample(index: int, concept: str = "heart", *, seed: int = 0, size: int = 64):
    """(image, caption, shape, colour, background) of sample ``index`` of a new shape (palette colours) or a new
    colour (the six known shapes): drawn as ``training.synthetic`` draws (4x supersampled, same size and position
    ranges), a pure function of (concept, seed, index)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from training import synthetic

    _check_concept(concept)
    rng = np.random.default_rng([seed, 977, CONCEPTS.index(concept), index])
    if concept in NEW_SHAPES:
        shape = concept
        colour, background = (synthetic.COLOURS[int(i)] for i in rng.choice(len(synthetic.COLOURS), 2, replace=False))
    else:
        shape, colour = synthetic.SHAPES[int(rng.integers(len(synthetic.SHAPES)))], concept
        background = _backgrounds(concept)[int(rng.integers(len(_backgrounds(concept))))]
    side = float(rng.uniform(*synthetic.SIZE_RANGE)) * size
    margin = size * 0.03
    x0, y0 = (float(rng.uniform(margin, size - margin - side)) for _ in range(2))
    k, fill = synthetic.SUPERSAMPLE, NEW_COLOURS.get(colour) or synthetic.PALETTE[colour]
    big = Image.new("RGB", (size * k, size * k), synthetic.PALETTE[background])
    box = (x0 * k, y0 * k, (x0 + side) * k, (y0 + side) * k)
    if shape in NEW_SHAPES:
        ImageDraw.Draw(big).polygon(heart_polygon(*box), fill=fill)
    else:
        synthetic.draw_shape(ImageDraw.Draw(big), shape, box, fill, synthetic.PALETTE[background])
    return big.resize((size, size), Image.BOX), synthetic.caption(shape, colour, background), shape, colour, background


DEMO_CONCEPT_COUNTS = (256, 256)  # "demo:<concept>" datasets: concept images, original (prior-preservation) images


def concept_records(count: int, concept: str = "heart", *, reg_count: int = 0, seed: int = 0, size: int = 64):
    """(file stem, PIL image, metadata) of ``count`` samples of ``concept`` plus ``reg_count`` images of the original
    data (synthetic train split: prior preservation by data mixing, so the other prompts keep working)."""
    from training import synthetic

    for i in range(count):
        image, text, shape, colour, background = concept_sample(i, concept, seed=seed, size=size)
        yield f"{concept}_{i:05d}", image, {"text": text, "shape": shape, "colour": colour,
                                            "background": background, "concept": True}
    for i in range(reg_count):
        s = synthetic.sample(i, "train", seed=seed + 1, size=size)
        yield f"reg_{i:05d}", s.image, {"text": s.text, "shape": s.shape, "colour": s.colour,
                                        "background": s.background, "concept": False}


def concept_items(dataset: str, *, size: int = 64) -> list:
    """Training pairs of a ``"demo:<concept>"`` dataset (generated in memory, the same as ``demo data`` writes)."""
    from training.data import ImageCaption

    concept = dataset.removeprefix("demo:")
    _check_concept(concept)
    count, reg_count = DEMO_CONCEPT_COUNTS
    return [ImageCaption(image, meta["text"])
            for _, image, meta in concept_records(count, concept, reg_count=reg_count, size=size)]


def export_concept_data(out_dir: str | Path, count: int, concept: str = "heart", *, reg_count: int = 0,
                        seed: int = 0, size: int = 64) -> Path:
    """``concept_records`` as an imagefolder (PNG files + metadata.jsonl saying which image is which)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w") as f:
        for stem, image, meta in concept_records(count, concept, reg_count=reg_count, seed=seed, size=size):
            image.save(out / f"{stem}.png")
            f.write(json.dumps({"file_name": f"{stem}.png"} | meta) + "\n")
    return out


def concept_prompts(n: int, concept: str = "heart", *, seed: int = 4321) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs naming ``concept``, every combination of the other two attributes before any
    repeats."""
    import numpy as np

    from training import synthetic

    _check_concept(concept)
    if concept in NEW_SHAPES:
        combos = [(concept, c, b) for c in synthetic.COLOURS for b in synthetic.COLOURS if c != b]
    else:
        combos = [(s, concept, b) for s in synthetic.SHAPES for b in _backgrounds(concept)]
    order = [combos[i] for i in np.random.default_rng(seed).permutation(len(combos))] * (n // len(combos) + 1)
    return [(synthetic.caption(*c), seed + i) for i, c in enumerate(order[:n])]


def evaluate_concept(images: list, prompts: list[str]) -> dict:
    """``studio.evaluator`` extended by the demo concepts: the heart as a seventh shape template (IoU against the
    same mask), orange as a ninth colour (the majority nearest colour of the shape mask, background excluded)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from studio.evaluator import EvaluatorConfig, analyze
    from training import synthetic

    cfg, k = EvaluatorConfig(), synthetic.SUPERSAMPLE
    names = list(synthetic.PALETTE) + list(NEW_COLOURS)
    palette = np.array(list(synthetic.PALETTE.values()) + list(NEW_COLOURS.values()), dtype=np.float32)
    hits = {"background": 0, "colour": 0, "shape": 0, "all": 0}
    for image, prompt in zip(images, prompts):
        colour, shape, background = prompt.split()[1], prompt.split()[2], prompt.split()[5]
        det = analyze(image, cfg)
        iou, found_colour, found_shape = dict(det.shape_iou), None, None
        if det.mask.any():
            ys, xs = np.nonzero(det.mask)
            big = Image.new("L", (cfg.size * k, cfg.size * k), 0)
            ImageDraw.Draw(big).polygon(heart_polygon(xs.min() * k, ys.min() * k, (xs.max() + 1) * k,
                                                      (ys.max() + 1) * k), fill=255)
            template = np.asarray(big.resize((cfg.size, cfg.size), Image.BOX)) >= 128
            iou["heart"] = float(np.logical_and(det.mask, template).sum() / np.logical_or(det.mask, template).sum())
            found_shape = max(iou, key=iou.get)
            px = np.asarray(image.convert("RGB").resize((cfg.size, cfg.size), Image.BILINEAR), dtype=np.float32)
            labels = ((px[det.mask][:, None, :] - palette) ** 2).sum(-1).argmin(-1)
            labels = labels[labels != names.index(det.background)]
            if labels.size:
                found_colour = names[int(np.bincount(labels).argmax())]
        ok = {"background": det.background == background, "colour": found_colour == colour,
              "shape": found_shape == shape}
        for key, value in (ok | {"all": all(ok.values())}).items():
            hits[key] += value
    return {"n": len(images), "accuracy": {key: v / max(1, len(images)) for key, v in hits.items()},
            "chance": {"shape": 1 / (len(synthetic.SHAPES) + len(NEW_SHAPES)),
                       "colour": 1 / (len(names) - 1)}}


def demo_scores(pipe, concept: str = "heart", *, n_concept: int = 48, n_original: int = 48, steps: int = 20,
                guidance: float = 5.0, batch: int = 16) -> dict:
    """Prompts naming ``concept`` scored with ``evaluate_concept``, original train-distribution prompts with the
    standard ``studio.evaluator`` (``training.demo_family.eval_prompts``); same prompts and seeds on every call."""
    from studio.evaluator import evaluate_batch
    from training.demo_family import eval_prompts

    def images(prompts):
        out = []
        for i in range(0, len(prompts), batch):
            chunk = prompts[i:i + batch]
            out += pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                        generator=[torch.Generator().manual_seed(s) for _, s in chunk]).images
        return out

    concept_set, original = concept_prompts(n_concept, concept), eval_prompts(n_original, "train")
    with torch.no_grad():
        concept_report = evaluate_concept(images(concept_set), [p for p, _ in concept_set])
        original_report = evaluate_batch(images(original), [p for p, _ in original])
    return {"concept": concept, "concept_accuracy": concept_report["accuracy"], "chance": concept_report["chance"],
            "original_accuracy": original_report["accuracy"], "steps": steps, "guidance": guidance}


def _demo_main(argv: list[str]) -> int:
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
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {file}")
        return 0
    if a.cmd == "data":
        out = export_concept_data(a.out, a.count, a.concept, reg_count=a.reg_count, seed=a.seed)
        print(f"wrote {a.count} {a.concept} + {a.reg_count} original images to {out}")
        return 0
    pipe = load_base(a.model)
    if a.lora:
        pipe.load_lora_weights(str(a.lora), adapter_name="lora")
        pipe.set_adapters(["lora"], adapter_weights=[a.scale])
    report = demo_scores(pipe, a.concept, n_concept=a.n_concept, n_original=a.n_original, steps=a.steps,
                         guidance=a.guidance or _default_guidance(a.model))
    print(json.dumps({"model": a.model, "lora": a.lora, "scale": a.scale if a.lora else None, **report}, indent=1))
    return 0


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        return _demo_main(argv[1:])
    a, extra = cli_parser("python -m training.lora", __doc__.splitlines()[0], "LoraTrainConfig").parse_known_args(argv)
    built = trainer_from_cli(a, extra, load_config, make_trainer)
    if built is None:
        return 2
    cfg, trainer = built
    task = trainer.task
    print(f"LoRA rank {cfg.rank}, alpha {cfg.lora_alpha} (scale {cfg.lora_alpha / cfg.rank:g}): "
          f"{task.lora_params:,} trainable parameters = {task.lora_params / task.base_params:.2%} of the UNet's "
          f"{task.base_params:,}", flush=True)
    return run_with_progress(trainer, a.resume, ("loss", "val_all"), lambda r: f"LoRA: {r.output}/{LORA_WEIGHT_NAME}")


if __name__ == "__main__":
    sys.exit(main())
