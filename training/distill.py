"""Knowledge distillation of a layer-removed SDXL-layout UNet (BK-SDM, arXiv 2305.15798; SSD-1B / Vega, arXiv
2401.02677) on the shared Trainer.

    python -m training.distill --config configs/distill-demo-ssd.toml --set steps=10 lr=1e-4   # or --steps 10
    accelerate launch -m training.distill --config configs/distill-ssd1b-from-sdxl.toml
    python -m training.distill_bench                 # cost of a KD step vs a plain fine-tuning step
    python -m training.demo_family evaluate --model outputs/distill/demo-ssd/final   # evaluator scores

Loss (every MSE a mean over its tensor, as in both papers):
    L = λ_task·MSE(ε_S, target) + λ_out·MSE(ε_S, Σ_i w_i ε_Ti) + λ_feat·Σ_l c_l·MSE(f_S^l, Σ_i w_i f_Ti^l)
on the same noisy latent, timestep and conditioning; teachers frozen, in eval mode, under ``torch.no_grad``.
Feature pairs (``feature_pairs``) come from the removal name map: level ``"layer"`` pairs every kept resnet and
transformer layer (SSD-1B), level ``"block"`` every down/mid/up block (BK-SDM); forward hooks capture them.
"""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.recipes import recipe_plan
from studio.removal import RemovalPlan, build_student
from studio.train_config.distill import FEATURE_LEVELS, DistillConfig
from training.cli import cli_parser, run_with_progress, trainer_from_cli
from training.models import DTYPES, default_guidance, frozen_dtype
from training.trainer import Trainer, build_trainer

_LAYER_RE = re.compile(r"\.(resnets|transformer_blocks)\.\d+$")


# ---------------------------------------------------------------- feature pairs and hooks

def feature_pairs(names: dict[str, str], level: str = "layer") -> list[tuple[str, str]]:
    """(student module, teacher module) pairs whose outputs the feature loss matches, in name-map order.

    ``names`` is a removal name map (student prefix -> teacher prefix). ``"layer"``: every resnet and transformer
    layer of the student with its teacher source (SSD-1B's layer-level loss). ``"block"``: every down block, the mid
    block and every up block with the teacher block its resnets come from (BK-SDM).
    """
    if level not in FEATURE_LEVELS:
        raise ValueError(f"feature level must be one of {FEATURE_LEVELS}; got {level!r}")
    layers = [(s, t) for s, t in names.items() if _LAYER_RE.search(s)]
    if level == "layer":
        return layers
    blocks: dict[str, str] = {}
    for s, t in layers:
        sb, tb = (".".join(x.split(".")[:1 if x.startswith("mid_block") else 2]) for x in (s, t))
        blocks.setdefault(sb, tb)
    kind = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(blocks.items(), key=lambda p: (kind[p[0].split(".")[0]], p[0]))


def _tensor(output) -> torch.Tensor:
    """Hook output -> tensor: down blocks return (hidden, skips), Transformer2D an output object."""
    if isinstance(output, tuple):
        output = output[0]
    return getattr(output, "sample", output)


class FeatureHooks:
    """Forward hooks on named submodules of ``module``; ``features[name]`` holds the latest output."""

    def __init__(self, module: torch.nn.Module, names: list[str]):
        self.features: dict[str, torch.Tensor] = {}
        self.handles = [module.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.features[name] = _tensor(output)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.features = [], {}


# ---------------------------------------------------------------- the distillation task

def _compose(names: dict[str, str], previous: dict[str, str]) -> dict[str, str]:
    """new student -> old student map followed by old student -> teacher map."""
    out = {}
    for s, mid in names.items():
        parts = mid.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in previous:
                out[s] = previous[prefix] + mid[len(prefix):]
                break
    return out


class DistillTask:
    """Teacher(s), student, data and the KD loss; plugs into ``training.trainer.Trainer``."""

    def __init__(self, cfg: DistillConfig, *, device: torch.device | str = "cpu", process_index: int = 0,
                 items: list | None = None):
        from diffusers import DDPMScheduler, StableDiffusionXLPipeline

        from training.data import SDXLBatches, load_items

        self.cfg, self.device, self.process_index = cfg, torch.device(device), process_index
        self.pipe = StableDiffusionXLPipeline.from_pretrained(cfg.teachers[0]["path"])
        self.pipe.set_progress_bar_config(disable=True)
        dtype = frozen_dtype(cfg.mixed_precision, self.device)
        self.teachers, total = [], sum(t["weight"] for t in cfg.teachers)
        for i, t in enumerate(cfg.teachers):
            unet = self.pipe.unet if i == 0 else StableDiffusionXLPipeline.from_pretrained(t["path"]).unet
            if dict(unet.config) != dict(self.pipe.unet.config):
                raise ValueError(f"DistillConfig.teachers: {t['path']} has a different UNet config than "
                                 f"{cfg.teachers[0]['path']}; mixed teachers must share one architecture")
            unet.requires_grad_(False).eval()
            self.teachers.append((unet, t["weight"] / total))
        self.model, self.names = self._initial_student()  # from the fp32 CPU teacher
        self.model.to(self.device)
        for unet, _ in self.teachers:
            unet.to(self.device, dtype)
        for m in (self.pipe.vae, self.pipe.text_encoder, self.pipe.text_encoder_2):
            m.requires_grad_(False).eval()
        self.pipe.vae.to(self.device)
        for m in (self.pipe.text_encoder, self.pipe.text_encoder_2):  # frozen: on the GPU in the training dtype
            m.to(self.device, dtype)
        self.noise_sched = DDPMScheduler.from_config(self.pipe.scheduler.config)
        self.guidance = cfg.validation_guidance or default_guidance(cfg.teachers[0]["path"])
        items = items if items is not None else load_items(
            cfg.dataset, count=cfg.dataset_count, size=max(max(b) for b in cfg.buckets), seed=cfg.seed,
            caption_column=cfg.caption_column)
        self.data = SDXLBatches(items, self.pipe, buckets=[tuple(b) for b in cfg.buckets],
                                cache_latents=cfg.cache_latents, cache_text=cfg.cache_text,
                                cache_dir=cfg.cache_dir or None, caption_dropout=cfg.caption_dropout,
                                device=self.device)
        self._stage = 0
        self._hooks: list[FeatureHooks] = []
        self._attach_hooks()
        self._teacher_images = None

    # student
    def _initial_student(self):
        from diffusers import UNet2DConditionModel

        cfg, teacher = self.cfg, self.teachers[0][0]
        if not Path(cfg.student).is_dir():
            plan = recipe_plan(cfg.student, dict(teacher.config), keep=cfg.student_keep)
            student, names = build_student(teacher, plan)
            return student.float().requires_grad_(True), names
        folder = Path(cfg.student)
        sub = folder / "unet" if (folder / "unet" / "config.json").exists() else folder
        student = UNet2DConditionModel.from_pretrained(sub).float().requires_grad_(True)
        map_file = next((p for p in (sub / "name_map.json", folder / "name_map.json") if p.exists()), None)
        if map_file is not None:
            return student, json.loads(map_file.read_text())
        teacher_modules = dict(teacher.named_modules())
        return student, {n: n for n, _ in student.named_modules() if _LAYER_RE.search(n) and n in teacher_modules}

    def rebuild(self, step: int) -> bool:
        """Apply the progressive stages with ``at_step <= step`` (each removes more units); True when applied."""
        due = sum(s["at_step"] <= step for s in self.cfg.stages)
        if due <= self._stage:
            return False
        for s in self.cfg.stages[self._stage:due]:
            cfg = dict(self.model.config)
            plan = (recipe_plan(s["recipe"], cfg, keep=self.cfg.student_keep) if "recipe" in s
                    else RemovalPlan(frozenset(s["units"]), f"stage@{s['at_step']}"))
            student, names = build_student(self.model.float().cpu(), plan)
            self.model, self.names = student.to(self.device).requires_grad_(True), _compose(names, self.names)
        self._stage = due
        self._attach_hooks()
        return True

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The (student module, teacher module) names the feature loss matches."""
        return feature_pairs(self.names, self.cfg.feature_level)

    def _attach_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.cfg.lambda_feat:
            unknown = sorted(set(self.cfg.feature_weights) - {s for s, _ in self.pairs})
            if unknown:
                raise ValueError(f"DistillConfig.feature_weights: {unknown} are not feature-pair student modules; "
                                 f"pairs: {[s for s, _ in self.pairs]}")
            self._hooks = [FeatureHooks(self.model, [s for s, _ in self.pairs])]
            self._hooks += [FeatureHooks(unet, [t for _, t in self.pairs]) for unet, _ in self.teachers]
        self._checked = False

    # loss
    def loss(self, model, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        from training.data import SDXLBatches, add_training_noise

        cfg = self.cfg
        gen = SDXLBatches.generator(cfg.seed, 0 if cfg.overfit_batch else step, micro, self.process_index)
        batch = self.data.batch(gen, cfg.batch_size)
        noisy, t, target = add_training_noise(batch["latents"], self.noise_sched, gen,
                                              noise_offset=cfg.noise_offset, device=self.device)
        cond = {"encoder_hidden_states": batch["prompt_embeds"],
                "added_cond_kwargs": {"text_embeds": batch["pooled"], "time_ids": batch["time_ids"]}}
        t_pred, t_feats = None, {}
        if cfg.lambda_out or cfg.lambda_feat:
            with torch.no_grad():
                for k, (unet, w) in enumerate(self.teachers):
                    c = {"encoder_hidden_states": cond["encoder_hidden_states"].to(unet.dtype),
                         "added_cond_kwargs": {n: v.to(unet.dtype) for n, v in cond["added_cond_kwargs"].items()}}
                    pred = unet(noisy.to(unet.dtype), t, **c).sample.float() * w
                    t_pred = pred if t_pred is None else t_pred + pred
                    if cfg.lambda_feat:
                        for s, tn in self.pairs:
                            f = self._hooks[1 + k].features[tn].float() * w
                            t_feats[s] = f if s not in t_feats else t_feats[s] + f
        pred = model(noisy, t, **cond).sample
        task = F.mse_loss(pred.float(), target.float())
        total = cfg.lambda_task * task
        scalars = {"task": task.item()}
        if cfg.lambda_out:
            out = F.mse_loss(pred.float(), t_pred)
            total = total + cfg.lambda_out * out
            scalars["out"] = out.item()
        if cfg.lambda_feat:
            feats = self._hooks[0].features
            if not self._checked:
                bad = [f"{s} {tuple(feats[s].shape)} vs {tn} {tuple(t_feats[s].shape)}" for s, tn in self.pairs
                       if feats[s].shape != t_feats[s].shape]
                if bad:
                    raise ValueError(f"feature pairs with different shapes: {bad}")
                self._checked = True
            feat = sum(cfg.feature_weights.get(s, 1.0) * F.mse_loss(feats[s].float(), t_feats[s])
                       for s, _ in self.pairs)
            total = total + cfg.lambda_feat * feat
            scalars["feat"] = feat.item()
        for h in self._hooks:
            h.features.clear()
        return total, scalars

    # validation and export
    def _render(self, unet) -> list:
        """Validation images of ``unet`` (an fp32 student or a teacher). The prompts are encoded once by the frozen
        encoders (fp16 on a GPU) and handed over in the UNet's dtype: the pipeline has no text encoders of its own,
        so it casts embeddings to the UNet's dtype rather than the encoders'."""
        from diffusers import StableDiffusionXLPipeline

        p, size, prompts = self.pipe, self.cfg.buckets[0], list(self.cfg.validation_prompts)
        pipe = StableDiffusionXLPipeline(vae=p.vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                         tokenizer_2=None, unet=unet, scheduler=p.scheduler)
        pipe.set_progress_bar_config(disable=True)
        embeds = p.encode_prompt(prompts, device=self.device, do_classifier_free_guidance=self.guidance > 1)
        pe, ne, pp, npp = (None if e is None else e.to(unet.dtype) for e in embeds)
        gens = [torch.Generator().manual_seed(self.cfg.seed + i) for i in range(len(prompts))]
        hooks, self._hooks = self._hooks, []  # keep validation activations out of the feature buffers
        for h in hooks:
            h.features.clear()
        try:
            return pipe(prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pp,
                        negative_pooled_prompt_embeds=npp, num_inference_steps=self.cfg.validation_steps,
                        guidance_scale=self.guidance, width=size[0], height=size[1], generator=gens).images
        finally:
            for h in hooks:
                h.features.clear()
            self._hooks = hooks

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        """Teacher (rendered once) and student images side by side; evaluator scores for demo prompts."""
        from PIL import Image

        from studio.demo.evaluator import demo_accuracy

        out_dir.mkdir(parents=True, exist_ok=True)
        prompts = list(self.cfg.validation_prompts)
        if not prompts:
            return {}
        if self._teacher_images is None:
            self._teacher_images = self._render(self.teachers[0][0])
        images = self._render(self.model)
        w, h = images[0].size  # row 1: teacher, row 2: student
        grid = Image.new("RGB", (w * len(prompts), 2 * h))
        for i, im in enumerate(self._teacher_images + images):
            grid.paste(im, ((i % len(prompts)) * w, (i // len(prompts)) * h))
        grid.save(out_dir / f"step-{step:06d}.png")
        student, teacher = demo_accuracy(images, prompts), demo_accuracy(self._teacher_images, prompts)
        return {} if student is None else {"val_student_all": student, "val_teacher_all": teacher}

    def export(self, out_dir: Path) -> Path:
        """UNet-only folder: ``unet/`` (diffusers, safetensors, in ``save_dtype``), ``name_map.json``,
        ``distill_config.json``, ``studio_model.json`` (base + default guidance) and a short README.md."""
        out_dir.mkdir(parents=True, exist_ok=True)
        dtype = DTYPES[self.cfg.save_dtype]
        unet = self.model if dtype == torch.float32 else copy.deepcopy(self.model).to(dtype)  # the run keeps fp32
        unet.save_pretrained(out_dir / "unet", safe_serialization=True)
        (out_dir / "name_map.json").write_text(json.dumps(self.names, indent=1) + "\n")
        (out_dir / "distill_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1) + "\n")
        base = self.cfg.base_name or Path(self.cfg.teachers[0]["path"]).name
        (out_dir / "studio_model.json").write_text(json.dumps(
            {"base": base, "default_guidance": self.guidance,
             "description": f"distilled from {base} ({self.cfg.student})"}, indent=1) + "\n")
        params = sum(p.numel() for p in self.model.parameters())
        teacher_params = sum(p.numel() for p in self.teachers[0][0].parameters())
        (out_dir / "README.md").write_text(
            f"# Distilled UNet: {self.cfg.student} from {base}\n\nParameters: {params:,} ({params / teacher_params:.1%}"
            f" of the teacher's {teacher_params:,}). Trained {self.cfg.steps} steps with λ_task/λ_out/λ_feat = "
            f"{self.cfg.lambda_task}/{self.cfg.lambda_out}/{self.cfg.lambda_feat}, feature level "
            f"{self.cfg.feature_level} ({len(self.pairs)} pairs). Config: `distill_config.json`.\n")
        return out_dir


def make_trainer(cfg: DistillConfig, *, items: list | None = None) -> Trainer:
    """A Trainer wired to a DistillTask on the accelerator's device."""
    return build_trainer(cfg, DistillTask, items=items)


def run_distill(cfg: DistillConfig, *, resume_from: str | None = None, on_step=None, should_stop=None,
                items: list | None = None):
    """Distill per ``cfg``; returns the TrainResult (``result.output`` = the exported student folder)."""
    return make_trainer(cfg, items=items).run(resume_from=resume_from, on_step=on_step, should_stop=should_stop)


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = cli_parser("python -m training.distill", __doc__.splitlines()[0], "DistillConfig")
    p.add_argument("--print-pairs", action="store_true", help="print the feature pairs and exit")
    a, extra = p.parse_known_args(argv)
    built = trainer_from_cli(a, extra, DistillConfig.load, make_trainer)
    if built is None:
        return 2
    cfg, trainer = built
    if a.print_pairs:
        for s, t in trainer.task.pairs:
            print(f"{s} <- {t}")
        return 0
    return run_with_progress(trainer, a.resume, ("loss", "task", "out", "feat"), lambda r: f"student: {r.output}")


if __name__ == "__main__":
    sys.exit(main())
