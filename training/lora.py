"""LoRA fine-tuning of an SDXL-family model (its UNet, optionally both text encoders) with peft, on the shared Trainer.

    python -m training.lora --config configs/lora-demo-heart.toml --set steps=200      # or --steps 200
    accelerate launch -m training.lora --config configs/lora-demo-heart.toml
    python -m training.lora demo data --concept orange --out data/lora-orange   # the demo concepts: training.lora_demo

The base model is any registry name (students included: a UNet-only student gets its base's text encoders and VAE
through ``studio.loading.ModelCache``) or a local folder. Base weights stay frozen; peft ``LoraConfig`` adapters
(``unet.add_adapter``; Hu et al. 2021, arXiv 2106.09685; init "gaussian" = B zero, so step 0 is the base model) are
the only parameters the optimizer sees. Loss: MSE to the scheduler's target (epsilon or v) on the noisy VAE latent,
optional Min-SNR-gamma weighting (arXiv 2303.09556) and offset noise, as diffusers' ``train_text_to_image_lora_sdxl``.
Output: ``<output_dir>/pytorch_lora_weights.safetensors`` in diffusers format (``training.lora_files.save_lora``;
keys ``unet.`` / ``text_encoder.`` / ``text_encoder_2.``, peft adapter metadata so alpha != rank survives, the training
config in the safetensors header) plus ``lora_config.json``; plain diffusers loads it with
``pipe.load_lora_weights(output_dir)``. Checkpoints hold the adapter weights only (same file) plus optimizer state.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.train_config.lora import CONFIG_NAME, LORA_WEIGHT_NAME, LoraTrainConfig
from training.cli import cli_parser, run_with_progress, trainer_from_cli
from training.lora_files import load_lora_into, load_teacher, save_lora
from training.models import DTYPES, default_guidance, frozen_dtype, load_base
from training.trainer import Trainer, build_trainer


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
        low = frozen_dtype(cfg.mixed_precision, self.device)
        for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
            m.to(self.device)
            if low != torch.float32:
                m.to(low)
        cast_training_params([pipe.unet, *self.text_encoders], torch.float32)  # adapters train in fp32
        pipe.vae.to(self.device)
        self.teacher = None
        if cfg.kd_weight:
            self.teacher = load_teacher(cfg.kd_teacher, cfg.kd_teacher_lora).to(self.device, low)
        self.model = LoraModules(pipe, cfg.train_text_encoder)
        self.lora_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.guidance = cfg.validation_guidance or default_guidance(cfg.base_model)
        if items is None:
            items = load_items(cfg.dataset, caption_column=cfg.caption_column, size=max(max(b) for b in cfg.buckets))
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

        from studio.demo.evaluator import demo_accuracy

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
        accuracy = demo_accuracy(images, prompts)
        return {} if accuracy is None else {"val_all": accuracy}

    def export(self, out_dir: Path) -> Path:
        """``<output_dir>/pytorch_lora_weights.safetensors`` + ``lora_config.json`` (``out_dir`` is unused: the
        LoRA sits at the top of the output folder, where diffusers' ``load_lora_weights(output_dir)`` finds it)."""
        folder = Path(self.cfg.output_dir)
        file = save_lora(folder, self.pipe.unet, self.text_encoders, config=self.cfg.to_dict(),
                         dtype=DTYPES[self.cfg.save_dtype])
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


def make_trainer(cfg: LoraTrainConfig, *, items: list | None = None) -> Trainer:
    """A Trainer wired to a LoraTask on the accelerator's device (checkpoints keep only the adapters)."""
    return build_trainer(cfg, LoraTask, items=items)


def run_lora(cfg: LoraTrainConfig, *, resume_from: str | None = None, on_step=None, should_stop=None,
             items: list | None = None):
    """Train per ``cfg``; returns the TrainResult (``result.output`` = the folder holding the LoRA file)."""
    return make_trainer(cfg, items=items).run(resume_from=resume_from, on_step=on_step, should_stop=should_stop)


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from training.lora_demo import main as demo_main

        return demo_main(argv[1:])
    a, extra = cli_parser("python -m training.lora", __doc__.splitlines()[0], "LoraTrainConfig").parse_known_args(argv)
    built = trainer_from_cli(a, extra, LoraTrainConfig.load, make_trainer)
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
