"""Shared training plumbing: a generic accelerate Trainer with a pluggable loss, checkpoints, resume.

    trainer = Trainer(config, task)          # task: a TrainTask (distillation, LoRA, ...)
    result = trainer.run(resume_from="latest", on_step=lambda step, total, info: ..., should_stop=lambda: False)

The Trainer owns everything that is not specific to *what* is trained: the ``Accelerator`` (device, mixed precision,
multi-GPU, gradient accumulation), AdamW + a diffusers ``get_scheduler`` schedule, an optional diffusers ``EMAModel``,
checkpoints (``accelerator.save_state`` + ``trainer_state.json`` with the config), resume, a CSV log (TensorBoard
too when installed), validation every N steps, the ``on_step(step, total, info)`` / ``should_stop()`` callbacks and
the non-finite-loss guard (stop before the optimizer step; the last good checkpoint stays).
A task supplies the trainable module and ``loss(step, micro)``; batches are a pure function of (seed, step, micro),
so a resumed run replays the uninterrupted run exactly.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from studio.train_config.base import LOG_FILE, STATE_FILE, TrainConfig, checkpoint_dirs, stop_requested

FORMAT_VERSION = 1


# ---------------------------------------------------------------- task protocol

class TrainTask(Protocol):
    """What a trainer trains. ``model`` gets the optimizer, EMA and checkpoints; the rest is the task's business."""

    model: torch.nn.Module

    def loss(self, model: torch.nn.Module, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of micro-batch ``micro`` of optimizer step ``step`` (0-based) and the scalars to log. ``model`` is
        ``self.model`` as prepared by accelerate (DDP-wrapped on several GPUs): call it, not ``self.model``."""

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        """Optional: previews/scores at ``step``; return scalars to log."""

    def export(self, out_dir: Path) -> Path:
        """Write the final artifact (``self.model`` holds the EMA weights when EMA is on)."""

    def rebuild(self, step: int) -> bool:
        """Optional: swap ``self.model`` before ``step`` (progressive schedules); True when it changed."""


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN/inf loss; ``checkpoint`` is the last good checkpoint (or None)."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    steps_done: int
    history: list[dict] = field(default_factory=list)  # one info dict per step (this run)
    seconds: float = 0.0
    stopped: bool = False  # should_stop() ended the run early
    out_of_time: bool = False  # max_minutes ended the run early (the student was still exported)
    output: Path | None = None  # what task.export wrote (None when stopped early)
    checkpoint: Path | None = None  # newest checkpoint


# ---------------------------------------------------------------- checkpoints

def resolve_checkpoint(output_dir: str | Path, resume_from: str | Path) -> Path:
    """``"latest"`` -> newest checkpoint of ``output_dir``; a path -> that checkpoint (ValueError when missing)."""
    if str(resume_from) == "latest":
        found = checkpoint_dirs(output_dir)
        if not found:
            raise ValueError(f"resume_from='latest': no checkpoint in {output_dir}")
        return found[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).exists():
        raise ValueError(f"resume_from={str(resume_from)!r} is not a checkpoint folder (no {STATE_FILE})")
    return path


def read_state(checkpoint: str | Path) -> dict:
    """``trainer_state.json`` of a checkpoint: format_version, step, config, history."""
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def make_accelerator(config: TrainConfig):
    """An ``Accelerator`` for this config. In a single process an earlier state with other settings is dropped
    (accelerate keeps one global state); under ``accelerate launch`` the launcher's distributed state is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum)


def build_trainer(config: TrainConfig, task_class, *, items: list | None = None) -> "Trainer":
    """A Trainer wired to ``task_class(config, ...)`` on the accelerator's device; a task with ``register_hooks``
    (LoRA, few-step) decides what its checkpoints hold."""
    acc = make_accelerator(config)
    task = task_class(config, device=acc.device, process_index=acc.process_index, items=items)
    if hasattr(task, "register_hooks"):
        task.register_hooks(acc)
    return Trainer(config, task, accelerator=acc)


# ---------------------------------------------------------------- trainer

class Trainer:
    """Generic loop: ``run()`` optimises ``task.model`` with ``task.loss`` for ``config.steps`` steps."""

    def __init__(self, config: TrainConfig, task: TrainTask, *, accelerator=None):
        self.config = config
        self.task = task
        self.accelerator = accelerator or make_accelerator(config)
        self.out = Path(config.output_dir)
        self.step = 0
        self.ema = None
        self._writer = None

    # setup
    def _setup(self, step: int) -> None:
        """(Re)create optimizer, schedule and EMA for the current ``task.model``, prepared by accelerate."""
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        cfg, acc = self.config, self.accelerator
        model = self.task.model
        if cfg.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
            model.enable_gradient_checkpointing()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the task's model has no trainable parameters")
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                              num_training_steps=cfg.steps * acc.num_processes)
        acc._models.clear(), acc._optimizers.clear(), acc._schedulers.clear(), acc._custom_objects.clear()
        self.model, self.optimizer, self.scheduler = acc.prepare(model, opt, sched)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()" is intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):  # a model swapped mid-run continues the schedule where it was
                self.scheduler.scheduler.step()
        self.ema = None
        if cfg.ema_decay:
            self.ema = EMAModel(params, decay=cfg.ema_decay)
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)

    def prepare(self) -> None:
        """Step 0: seed, let the task build its model, create optimizer/schedule/EMA."""
        torch.manual_seed(self.config.seed)
        self.step = 0
        if hasattr(self.task, "rebuild"):
            self.task.rebuild(0)
        self._setup(0)

    def train_step(self) -> dict:
        """One optimizer step outside ``run`` (benchmarks); call ``prepare()`` first."""
        info = self._train_step(None)
        self.step += 1
        return info

    # checkpoints
    def save_checkpoint(self, history: list[dict]) -> Path:
        path = self.out / f"checkpoint-{self.step}"
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            state = {"format_version": FORMAT_VERSION, "step": self.step, "config": self.config.to_dict(),
                     "config_class": type(self.config).__name__, "history": history}
            tmp = path / (STATE_FILE + ".tmp")  # written last and atomically: its presence marks a complete checkpoint
            tmp.write_text(json.dumps(state, indent=1) + "\n")
            tmp.replace(path / STATE_FILE)
            keep = self.config.keep_checkpoints
            if keep:
                for old in checkpoint_dirs(self.out)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return path

    def _load_checkpoint(self, path: Path) -> list[dict]:
        state = read_state(path)
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {state.get('format_version')} != {FORMAT_VERSION}")
        self.step = int(state["step"])
        if hasattr(self.task, "rebuild") and self.task.rebuild(self.step):
            self._setup(self.step)
        self.accelerator.load_state(str(path))
        return state.get("history", [])

    def _stop_file(self) -> bool:
        """True when ``<output_dir>/STOP`` asks to stop now (``studio.train_config.base.request_stop``); on several
        processes every rank gets the same answer."""
        flag = stop_requested(self.out, self.step)
        if self.accelerator.num_processes > 1:
            flag = bool(self.accelerator.reduce(torch.tensor([float(flag)], device=self.accelerator.device),
                                                reduction="sum").item())
        return flag

    # logging
    def _log(self, info: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        path = self.out / LOG_FILE
        rows = []
        if path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                if set(info) - set(header):
                    rows = list(reader)
        else:
            header = []
        if set(info) - set(header):  # new columns (first row, validation scores): rewrite with the wider header
            header = header + [k for k in info if k not in header]
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=header)
                w.writeheader()
                w.writerows(rows)
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(info)
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                self._writer = False
        if self._writer:
            for key, value in info.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, info["step"])

    # loop
    def run(self, *, resume_from: str | Path | None = None,
            on_step: Callable[[int, int, dict], Any] | None = None,
            should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train to ``config.steps``; returns a TrainResult. Raises NonFiniteLossError on a NaN/inf loss.

        Args:
            resume_from (`str` or `Path`, *optional*): a checkpoint folder or ``"latest"``.
            on_step (`Callable`, *optional*): called as ``on_step(step, total, info)`` after every optimizer step
                (``step`` 1-based, ``info`` the logged scalars).
            should_stop (`Callable`, *optional*): polled once per step; True saves a checkpoint and returns.
        """
        cfg, acc = self.config, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            (self.out / "config.json").write_text(json.dumps(
                {"config_class": type(cfg).__name__, "config": cfg.to_dict()}, indent=1) + "\n")
        self.prepare()
        history: list[dict] = []
        last_ckpt = None
        if resume_from is not None:
            last_ckpt = resolve_checkpoint(self.out, resume_from)
            history = self._load_checkpoint(last_ckpt)
            print(f"resumed from {last_ckpt} at step {self.step}", flush=True)
        previous = len(history)
        t0 = time.time()
        stopped = out_of_time = False
        while self.step < cfg.steps:
            if (should_stop is not None and should_stop()) or self._stop_file():
                stopped = True
                print(f"stop requested: stopping at step {self.step}/{cfg.steps}", flush=True)
                break
            if cfg.max_minutes and time.time() - t0 > cfg.max_minutes * 60:
                out_of_time = True
                print(f"max_minutes={cfg.max_minutes} reached at step {self.step}/{cfg.steps}", flush=True)
                break
            if hasattr(self.task, "rebuild") and self.task.rebuild(self.step):
                self._setup(self.step)
            info = self._train_step(last_ckpt)
            self.step += 1
            info = {"step": self.step, **info, "lr": self.scheduler.get_last_lr()[0],
                    "seconds": round(time.time() - t0, 3)}
            if cfg.validate_every and self.step % cfg.validate_every == 0 and hasattr(self.task, "validate"):
                info |= self._validate()
            history.append(info)
            self._log(info)
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or self.step == cfg.steps:
                last_ckpt = self.save_checkpoint(history)
            if on_step is not None:
                on_step(self.step, cfg.steps, info)
        if (stopped or out_of_time) and self.step > previous and (last_ckpt is None or
                                                                   not last_ckpt.name.endswith(f"-{self.step}")):
            last_ckpt = self.save_checkpoint(history)
        output = None if stopped else self._export()
        if self._writer:
            self._writer.close()
        return TrainResult(self.step, history[previous:], time.time() - t0, stopped, out_of_time, output, last_ckpt)

    def _train_step(self, last_ckpt: Path | None) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; the averaged scalars."""
        cfg, acc = self.config, self.accelerator
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            with acc.accumulate(self.model), acc.autocast():
                loss, scalars = self.task.loss(self.model, self.step, micro)
                if not math.isfinite(loss.item()):
                    where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was saved yet"
                    raise NonFiniteLossError(
                        f"non-finite loss ({loss.item()}) at step {self.step + 1}, micro-batch {micro}: training "
                        f"stopped before the optimizer step{where} (lower lr, check the data, or use fp32/bf16)",
                        last_ckpt)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            for key, value in {"loss": loss.item(), **scalars}.items():
                sums[key] = sums.get(key, 0.0) + value / cfg.grad_accum
        if self.ema is not None:
            self.ema.step(p for p in self.model.parameters() if p.requires_grad)
        return sums

    def _with_ema(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with the EMA weights swapped into the model (no-op without EMA)."""
        if self.ema is None:
            return fn()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            return fn()
        finally:
            self.ema.restore(params)

    def _validate(self) -> dict:
        if not self.accelerator.is_main_process:
            return {}
        self.task.model.eval()
        try:
            with torch.no_grad():
                return self._with_ema(lambda: self.task.validate(self.step, self.out / "validation"))
        finally:
            self.task.model.train()

    def _export(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        self.task.model.eval()
        try:
            return self._with_ema(lambda: self.task.export(self.out / "final"))
        finally:
            self.task.model.train()
