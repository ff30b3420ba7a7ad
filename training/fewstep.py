"""Few-step students on the shared Trainer: latent consistency distillation (a full student with a guidance input, or
an LCM-LoRA) and single-stage conditional distillation (CoDi) with a ControlNet or T2I-Adapter, plus its baselines.

    python -m training.fewstep --config configs/fewstep-demo-lcm.toml            # full student (UNet + guidance input)
    python -m training.fewstep --config configs/fewstep-demo-lcm-lora.toml       # LCM-LoRA
    python -m training.fewstep --config configs/fewstep-demo-sr.toml             # conditional, single stage
    python -m training.fewstep report                                            # demo tables, model cards, JSON

Latent consistency distillation (LCM, arXiv 2310.04378; LCM-LoRA, arXiv 2311.05556), per example: a skipping-schedule
index n, t = t_{n+k}, s = t_n = t - k, a guidance scale g from [guidance_min, guidance_max] and the noisy latent
z_t = a_t x + s_t e. The teacher's DDIM step with CFG gives z_s; the student is read as a consistency function
f(z, t) = c_skip(t) z + c_out(t) x0_hat(z, t) (LCMScheduler's boundary scalings, x0_hat from its epsilon / v output);
the target network (EMA of the student, or the student itself) is evaluated at (z_s, s):

    L = d( f_theta(z_t, t, g, c),  stopgrad f_target(z_s, s, g, c) ),   d = pseudo-Huber or L2

A full student takes g through the UNet's ``time_cond_proj_dim`` embedding (``get_guidance_scale_embedding(g - 1)``,
as the SDXL pipeline feeds it); an LCM-LoRA has no g input and is used with guidance 1 and ``LCMScheduler``.
Single-stage conditional distillation (CoDi, arXiv 2310.01407) has no teacher forward: the conditional student is
its own solver. ``codi_solver`` "student": its DDIM step, z_s = a_s stopgrad(x0_hat) + s_s stopgrad(e_hat) (with CFG
at the example's scale when guidance_max > 1: one more student forward on the zero text embedding); "noise": its x0
re-noised with the true noise, z_s = a_s stopgrad(x0_hat) + s_s e. A denoising term keeps it a conditional denoiser:
L = d(f_theta(z_t), f_target(z_s)) + lambda_task ||e_hat_theta(z_t) - e||^2 (v for v-prediction models) - the
undistilled model's loss plus consistency.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.fewstep import (ADAPTER_FOLDERS, adapter_kind, conditional_pipeline, control_image, lcm_scheduler,
                            load_adapter, load_fewstep_pipeline, low_res, recommended_settings)
from studio.registry import SPEC_FILE
from studio.schedulers import make_scheduler
from studio.train_config.fewstep import FewStepConfig
from training.cli import cli_parser, run_with_progress, trainer_from_cli
from training.fewstep_models import (FewStepModules, bcast, build_adapter, consistency_distance, ddim_step,
                                     x0_and_eps)
from training.lora_files import load_lora_into, save_lora
from training.models import DTYPES, default_guidance, frozen_dtype, load_base
from training.trainer import Trainer, build_trainer

__all__ = ["FewStepConfig", "FewStepModules", "FewStepTask", "build_adapter", "consistency_distance",
           "load_fewstep_pipeline", "low_res", "recommended_settings", "make_trainer", "run_fewstep"]

TRAINABLE_FILE, TARGET_FILE = "trainable.safetensors", "target.safetensors"
CONFIG_FILE = "fewstep_config.json"


# ---------------------------------------------------------------- the consistency math (LCMScheduler's helpers)

# ---------------------------------------------------------------- models

def _guidance_embedding(pipe, scales: torch.Tensor, dim: int) -> torch.Tensor:
    """The pipeline's own embedding of a guidance scale (it embeds scale - 1, LCM's w)."""
    return pipe.get_guidance_scale_embedding(scales - 1, embedding_dim=dim)


# ---------------------------------------------------------------- the task

def _unconditional(text: dict) -> dict:
    """The unconditional input of classifier-free guidance: zero text embeddings (SDXL pipelines'
    force_zeros_for_empty_prompt), the same time ids."""
    return {"prompt_embeds": torch.zeros_like(text["prompt_embeds"]), "pooled": torch.zeros_like(text["pooled"]),
            "time_ids": text["time_ids"]}


class FewStepTask:
    """Teacher, student, target network, data and the few-step loss; plugs into ``training.trainer.Trainer``."""

    def __init__(self, cfg: FewStepConfig, *, device: torch.device | str = "cpu", process_index: int = 0,
                 items: list | None = None):
        from diffusers import DDPMScheduler

        from training.data import SDXLBatches, load_items

        self.cfg, self.device, self.process_index = cfg, torch.device(device), process_index
        self.pipe = pipe = load_base(cfg.teacher)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            m.requires_grad_(False).eval()
        self.noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.noise_sched.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"FewStepConfig.teacher: prediction type {self.prediction_type!r} is not supported "
                             f"(epsilon or v_prediction)")
        T = self.noise_sched.config.num_train_timesteps
        self.skip = T // cfg.num_ddim_timesteps
        if self.skip < 1:
            raise ValueError(f"FewStepConfig.num_ddim_timesteps={cfg.num_ddim_timesteps} exceeds the teacher's "
                             f"{T} training timesteps (skipping interval k = T // N must be >= 1)")
        self.lcm = lcm_scheduler(pipe.scheduler.config, cfg.num_ddim_timesteps)
        # the skipping schedule t_n = (n + 1) k - 1, n < N: LCMScheduler's training ("origin") timesteps
        self.solver_timesteps = (torch.arange(1, cfg.num_ddim_timesteps + 1) * self.skip - 1).to(self.device)
        self.alphas_cumprod = self.noise_sched.alphas_cumprod.to(self.device)
        self.frozen_dtype = frozen_dtype(cfg.mixed_precision, self.device)

        self.base_params = sum(p.numel() for p in pipe.unet.parameters())
        self.model, self.teacher, self.shared_teacher = self._build_models()
        self.model.to(self.device)
        if cfg.student == "lora" and self.frozen_dtype != torch.float32:  # frozen base in fp16/bf16, adapters fp32
            from diffusers.training_utils import cast_training_params

            self.model.unet.to(self.frozen_dtype)
            cast_training_params([self.model], torch.float32)
        self.trainable_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if self.teacher is not None and not self.shared_teacher:
            self.teacher.to(self.device, self.frozen_dtype)
        self.target = None
        if cfg.target_decay and cfg.objective != "task":
            self.target = copy.deepcopy(self.model).requires_grad_(False)
        pipe.vae.to(self.device)
        for te in (pipe.text_encoder, pipe.text_encoder_2):
            te.to(self.device)
        items = items if items is not None else load_items(cfg.dataset, count=cfg.dataset_count, size=cfg.resolution,
                                                           seed=cfg.seed, caption_column=cfg.caption_column)
        self.items = items
        self.data = SDXLBatches(items, pipe, buckets=[(cfg.resolution, cfg.resolution)], cache_latents=True,
                                cache_text=True, cache_dir=cfg.cache_dir or None, caption_dropout=cfg.caption_dropout,
                                device=self.device)

    # models
    def _student_base_unet(self):
        if not self.cfg.student_base or self.cfg.student_base == self.cfg.teacher:
            return None
        return load_base(self.cfg.student_base).unet.requires_grad_(False).eval()

    def _add_lora(self, unet) -> None:
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        cfg = self.cfg
        try:
            unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                                        target_modules=list(cfg.target_modules)))
        except ValueError as err:
            raise ValueError(f"FewStepConfig.target_modules {cfg.target_modules} do not fit the UNet: {err}") from err
        cast_training_params([unet], torch.float32)

    def _build_models(self):
        """(student, teacher or None, teacher shares the student's UNet with adapters off)."""
        from diffusers import UNet2DConditionModel

        cfg, teacher_unet = self.cfg, self.pipe.unet
        base = self._student_base_unet()
        if cfg.student == "full":
            source = base if base is not None else teacher_unet
            config = dict(source.config) | {"time_cond_proj_dim": cfg.time_cond_proj_dim}
            unet = UNet2DConditionModel.from_config(config)
            missing, unexpected = unet.load_state_dict(source.state_dict(), strict=False)
            if unexpected or set(missing) != {"time_embedding.cond_proj.weight"}:
                raise ValueError(f"full student from {cfg.student_base or cfg.teacher}: unexpected weights "
                                 f"{(list(missing) + list(unexpected))[:4]}")
            torch.nn.init.zeros_(unet.time_embedding.cond_proj.weight)  # step 0 = the base model for every scale
            return FewStepModules(unet.float().requires_grad_(True)), FewStepModules(teacher_unet), False
        shared = base is None
        unet = teacher_unet if shared else base
        if cfg.rank:
            self._add_lora(unet)
        adapter = None
        if cfg.condition:
            adapter = build_adapter(unet, cfg.adapter, cfg.adapter_channels, self.pipe.vae_scale_factor)
            adapter = adapter.float().requires_grad_(True)
        model = FewStepModules(unet, adapter)
        if cfg.init_from:
            self._load_conditional(model, cfg.init_from)
        if cfg.objective != "lcd":
            return model, None, False
        if cfg.condition:  # two-stage order: the task-trained conditional model, frozen, is the teacher
            return model, copy.deepcopy(model).requires_grad_(False).eval(), False
        return model, (None if shared else FewStepModules(teacher_unet)), shared

    def _load_conditional(self, model: FewStepModules, folder: str | Path) -> None:
        """Weights of a conditional output folder (adapter and LoRA) into ``model`` (same architecture)."""
        folder = Path(folder)
        if adapter_kind(folder) != self.cfg.adapter:
            raise ValueError(f"FewStepConfig.init_from: {folder} has no {ADAPTER_FOLDERS[self.cfg.adapter]}/ "
                             f"(adapter = {self.cfg.adapter!r})")
        saved = load_adapter(folder)
        try:
            model.adapter.load_state_dict(saved.state_dict())
        except RuntimeError as err:
            raise ValueError(f"FewStepConfig.init_from: {folder} has a different adapter ({str(err).splitlines()[0]})"
                             ) from err
        lora = folder / "pytorch_lora_weights.safetensors"
        if lora.exists() != bool(self.cfg.rank):
            raise ValueError(f"FewStepConfig.init_from: {folder} {'has' if lora.exists() else 'has no'} LoRA but "
                             f"rank={self.cfg.rank}")
        if lora.exists():
            load_lora_into(lora, model.unet)

    # checkpoints: trainable weights and the target network only (the frozen parts come from disk)
    def register_hooks(self, accelerator) -> None:
        from safetensors.torch import load_file, save_file

        def trainable(module):
            return {n: p for n, p in module.named_parameters() if p.requires_grad}

        names = list(trainable(self.model))

        def save_hook(models, weights, output_dir):
            if weights:
                weights.pop()
            if accelerator.is_main_process:
                save_file({n: p.detach().cpu().contiguous() for n, p in trainable(self.model).items()},
                          str(Path(output_dir) / TRAINABLE_FILE))
                if self.target is not None:
                    params = dict(self.target.named_parameters())
                    save_file({n: params[n].detach().cpu().contiguous() for n in names},
                              str(Path(output_dir) / TARGET_FILE))

        def load_hook(models, input_dir):
            if models:
                models.pop()
            for module, file in ((self.model, TRAINABLE_FILE), (self.target, TARGET_FILE)):
                if module is None:
                    continue
                state, params = load_file(str(Path(input_dir) / file)), dict(module.named_parameters())
                if set(state) != set(names):
                    raise ValueError(f"{input_dir}/{file} does not hold this run's trainable weights")
                with torch.no_grad():
                    for n, v in state.items():
                        params[n].copy_(v)

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    # batches
    def _batch(self, step: int, micro: int) -> dict:
        from training.data import SDXLBatches

        gen = SDXLBatches.generator(self.cfg.seed, step, micro, self.process_index)
        batch = self.data.batch(gen, self.cfg.batch_size)
        batch["gen"] = gen
        if self.cfg.condition:
            lows = [low_res(self.items[i].load(), self.cfg.resolution, self.cfg.condition_size)
                    for i in batch["indices"]]
            batch["control"] = self.control_tensor(lows)
        return batch

    def control_tensor(self, lows: list) -> torch.Tensor:
        """Low-resolution PIL images -> the adapter input, exactly as the pipeline prepares it (upsampled, [0, 1])."""
        return control_image(lows, self.cfg.resolution).to(self.device, torch.float32)

    # loss
    def _teacher_output(self, z, t, text, control, scales):
        """The frozen teacher's output with classifier-free guidance at per-example scales (zero text embedding as
        the unconditional input, as SDXL pipelines with force_zeros_for_empty_prompt)."""
        dtype = self.frozen_dtype
        zz = torch.cat([z, z]).to(dtype)
        empty = _unconditional(text)
        text2 = {k: torch.cat([text[k], empty[k]]).to(dtype) for k in text}
        control2 = None if control is None else torch.cat([control, control]).to(dtype)
        if self.shared_teacher:
            self.model.unet.disable_adapters()
            try:
                out = self.model(zz, torch.cat([t, t]), text2, control2).float()
            finally:
                self.model.unet.enable_adapters()
        else:
            out = self.teacher(zz, torch.cat([t, t]), text2, control2).float()
        cond, uncond = out.chunk(2)
        return uncond + bcast(scales) * (cond - uncond)

    def consistency_pair(self, model, x0, noise, start, end, text, control=None, scales=None):
        """(student consistency output at (z_start, start), stop-gradient target at (z_end, end), raw student output).

        The student reads its output as f = c_skip z + c_out x0_hat; "lcd" reaches z_end with the teacher's CFG DDIM
        step, "codi" with the student's own DDIM step or its x0 re-noised by the same noise (``codi_solver``). With
        ``end == start`` a DDIM step returns z_start, so a target equal to the student gives a zero distance."""
        cfg, ac = self.cfg, self.alphas_cumprod
        w_embed = None
        if cfg.student == "full":
            w_embed = _guidance_embedding(self.pipe, scales.cpu(), cfg.time_cond_proj_dim).to(x0.device, x0.dtype)
        z = self.noise_sched.add_noise(x0, noise, start)
        c_skip, c_out = (bcast(v) for v in self.lcm.get_scalings_for_boundary_condition_discrete(start.float()))
        output = model(z, start, text, control, w_embed).float()
        x0_hat, _ = x0_and_eps(output, z, start, ac, self.prediction_type)
        pred = c_skip * z + c_out * x0_hat
        with torch.no_grad():
            if cfg.objective == "lcd":
                teacher_x0, teacher_eps = x0_and_eps(self._teacher_output(z, start, text, control, scales), z, start,
                                                     ac, self.prediction_type)
                z_end = ddim_step(teacher_x0, teacher_eps, end, ac)
            elif cfg.codi_solver == "student":  # codi: the student's own DDIM step (CFG when the range is above 1)
                guided = output.detach()
                if cfg.guidance_max > 1:
                    uncond = model(z, start, _unconditional(text), control, w_embed).float()
                    guided = uncond + bcast(scales) * (guided - uncond)
                z_end = ddim_step(*x0_and_eps(guided, z, start, ac, self.prediction_type), end, ac)
            else:  # codi: z_end = a_end x0_hat + s_end noise
                z_end = ddim_step(x0_hat.detach(), noise, end, ac)
            target_model = self.target if self.target is not None else self.model
            c_skip_e, c_out_e = (bcast(v) for v in self.lcm.get_scalings_for_boundary_condition_discrete(end.float()))
            tx0, _ = x0_and_eps(target_model(z_end, end, text, control, w_embed).float(), z_end, end, ac,
                                self.prediction_type)
            target = c_skip_e * z_end + c_out_e * tx0
        return pred, target, output

    def _update_target(self) -> None:
        """target <- decay * target + (1 - decay) * student (LCM's EMA target network), over the trainable weights."""
        online = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, p in self.target.named_parameters():
                if online[n].requires_grad:
                    p.lerp_(online[n], 1 - self.cfg.target_decay)

    def loss(self, model, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        from training.data import add_training_noise

        cfg = self.cfg
        if self.target is not None and step > 0 and micro == 0:
            self._update_target()  # for the optimizer step just taken (so a resumed run replays it exactly)
        batch = self._batch(step, micro)
        gen, x0 = batch["gen"], batch["latents"]
        text = {k: batch[k] for k in ("prompt_embeds", "pooled", "time_ids")}
        control = batch.get("control")
        if cfg.objective == "task":
            noisy, t, target = add_training_noise(x0, self.noise_sched, gen, device=self.device)
            loss = F.mse_loss(model(noisy, t, text, control).float(), target.float())
            return loss, {}
        b = len(x0)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        index = torch.randint(0, cfg.num_ddim_timesteps, (b,), generator=gen).to(self.device)
        scales = (cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(b, generator=gen)).to(
            self.device)
        start = self.solver_timesteps[index]
        end = (start - self.skip).clamp(min=0)
        pred, target, output = self.consistency_pair(model, x0, noise, start, end, text, control, scales)
        cons = consistency_distance(pred, target, cfg.loss, cfg.huber_c)
        if cfg.objective == "codi" and cfg.lambda_task:  # the denoising loss at the same noisy latent
            truth = (self.noise_sched.get_velocity(x0, noise, start) if self.prediction_type == "v_prediction"
                     else noise)
            task = F.mse_loss(output, truth.float())
            return cons + cfg.lambda_task * task, {"consistency": cons.item(), "task": task.item()}
        return cons, {}

    # inference
    def pipeline(self, scheduler=None):
        """An inference pipeline over the student as it is now (its recommended sampler unless ``scheduler`` is given)."""
        parts = {k: getattr(self.pipe, k) for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer",
                                                     "tokenizer_2")}
        if scheduler is None and self.cfg.objective != "task":
            rec = self.recommended
            scheduler = make_scheduler(rec["scheduler"], dict(self.pipe.scheduler.config) | rec["scheduler_config"])
        sched = scheduler or self.pipe.scheduler
        if self.cfg.condition:
            pipe = conditional_pipeline(parts, self.model.unet, self.model.adapter, sched)
        else:
            from diffusers import StableDiffusionXLPipeline

            pipe = StableDiffusionXLPipeline(**parts, unet=self.model.unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def recommended(self) -> dict:
        """Scheduler, steps and guidance the output is meant to be used with."""
        cfg = self.cfg
        if cfg.objective == "task":  # the undistilled conditional model: an ordinary sampler with the teacher's CFG
            guidance = cfg.inference_guidance or default_guidance(cfg.teacher)
            return {"scheduler": "Euler", "steps": cfg.inference_steps, "guidance": guidance}
        return {"scheduler": cfg.inference_scheduler,
                "scheduler_config": {"original_inference_steps": cfg.num_ddim_timesteps},
                "steps": cfg.inference_steps, "guidance": cfg.recommended_guidance}

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        """A row of few-step validation images; evaluator accuracy (text-to-image) or PSNR (conditional)."""
        from training.fewstep_eval import validation_scores

        return validation_scores(self, step, out_dir)

    # export
    def export(self, out_dir: Path) -> Path:
        """full: ``<out>/unet`` + ``studio_model.json``; lora: ``<output_dir>/pytorch_lora_weights.safetensors``;
        conditional: ``<out>/controlnet`` or ``<out>/adapter`` (+ the UNet LoRA) + ``studio_model.json``. Weights as
        ``save_dtype``."""
        cfg, dtype, rec = self.cfg, DTYPES[self.cfg.save_dtype], self.recommended
        base = cfg.base_name or cfg.teacher
        if cfg.student == "lora" and not cfg.condition:
            folder = Path(cfg.output_dir)
            file = save_lora(folder, self.model.unet, config=cfg.to_dict() | {"fewstep": rec}, dtype=dtype)
            (folder / CONFIG_FILE).write_text(json.dumps(
                {"config": cfg.to_dict(), "recommended": rec, "base_model": cfg.student_base or cfg.teacher,
                 "lora_params": self.trainable_params, "unet_params": self.base_params,
                 "file_bytes": file.stat().st_size}, indent=1) + "\n")
            return folder
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = {"base": base, "default_size": cfg.resolution, "default_steps": rec["steps"],
                "default_guidance": rec["guidance"], "scheduler": rec["scheduler"]}
        if "scheduler_config" in rec:
            spec["scheduler_config"] = rec["scheduler_config"]
        if cfg.student == "full":
            copy.deepcopy(self.model.unet).to(dtype).save_pretrained(out_dir / "unet", safe_serialization=True)
            spec["description"] = f"few-step (LCM) student of {base}"
        else:
            sub = ADAPTER_FOLDERS[cfg.adapter]
            copy.deepcopy(self.model.adapter).to(dtype).save_pretrained(out_dir / sub, safe_serialization=True)
            if cfg.rank:
                save_lora(out_dir, self.model.unet, config=cfg.to_dict() | {"fewstep": rec}, dtype=dtype)
            spec |= {"description": f"{cfg.condition} ({cfg.objective}) conditional model on {base}",
                     "pipeline": type(self.pipeline()).__name__, sub: sub,
                     "lora": "pytorch_lora_weights.safetensors" if cfg.rank else None,
                     "condition": {"kind": "low-res", "size": cfg.condition_size, "resample": "box"}}
        (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=1) + "\n")
        (out_dir / CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict(), "trainable_params":
                                                       self.trainable_params}, indent=1) + "\n")
        return out_dir


# ---------------------------------------------------------------- entry points

def make_trainer(cfg: FewStepConfig, *, items: list | None = None) -> Trainer:
    """A Trainer wired to a FewStepTask on the accelerator's device (checkpoints: trainable weights + target)."""
    return build_trainer(cfg, FewStepTask, items=items)


def run_fewstep(cfg: FewStepConfig, *, resume_from: str | None = None, on_step=None, should_stop=None,
                items: list | None = None):
    """Train per ``cfg``; returns the TrainResult (``result.output`` = the exported folder)."""
    return make_trainer(cfg, items=items).run(resume_from=resume_from, on_step=on_step, should_stop=should_stop)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        from training.fewstep_cards import report_main

        return report_main(argv[1:])
    a, extra = cli_parser("python -m training.fewstep", __doc__.splitlines()[0], "FewStepConfig").parse_known_args(argv)
    built = trainer_from_cli(a, extra, FewStepConfig.load, make_trainer)
    if built is None:
        return 2
    cfg, trainer = built
    task = trainer.task
    what = f"objective {cfg.objective}" + (f", condition {cfg.condition}" if cfg.condition else "")
    print(f"few-step {cfg.student} student, {what}: {task.trainable_params:,} trainable parameters ({task.trainable_params / task.base_params:.2%} of the "
          f"teacher UNet's {task.base_params:,}); skipping interval k = {task.skip}", flush=True)
    return run_with_progress(trainer, a.resume, ("loss", "consistency", "task", "val_all", "val_psnr"),
                             lambda r: f"output: {r.output}")


if __name__ == "__main__":
    sys.exit(main())
