"""Training jobs: a persistent FIFO queue of subprocesses running the training CLIs, one per slot (GPU).

    runner = JobRunner()                                   # root: <data dir>/jobs, slots: one per GPU (1 on CPU)
    job_id = runner.submit("distill", {"teachers": [{"path": "assets/demo/teacher"}], "steps": 300})
    runner.poll()                                          # reap finished processes, start queued ones
    runner.status(job_id).status, runner.progress(job_id), runner.log_tail(job_id)

Every job is the command a user could run by hand (``python -m training.<kind> --config <job>/config.json``, plus
``--resume latest`` when resumed) in its own folder: ``config.json`` (the frozen, validated config), ``status.json``
(this registry), ``stdout.log`` and ``train/`` (the trainer's output_dir: ``log.csv``, ``checkpoint-*``,
``validation/``, the exported ``final/`` student or LoRA file). Cancel asks the trainer to stop through
``train/STOP`` (checkpoint, then exit) and escalates to signals if it does not. A new runner on the same root
re-attaches to running jobs (pid + process start time, via psutil) or marks them failed with the reason; jobs keep
running while the studio restarts. Finished outputs are copied (hard links) into the models dir so the Generate tab
lists them. This module never imports gradio (the Train tab wraps it).
"""
from __future__ import annotations

import csv
import dataclasses
import fcntl
import importlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from studio.names import safe_name
from studio.paths import REPO_ROOT, data_dir, models_dir, resolve_inside

KINDS = {"distill": "training.distill", "lora": "training.lora"}  # job kind -> CLI module (python -m ...)
TRANSITIONS = {  # allowed status changes; "resume" re-queues a failed or cancelled job
    "queued": {"running", "cancelled"},
    "running": {"finished", "failed", "cancelled"},
    "failed": {"queued"},
    "cancelled": {"queued"},
    "finished": set(),
}
LOG_FILE, STATUS_FILE, CONFIG_FILE, TRAIN_DIR = "stdout.log", "status.json", "config.json", "train"
LOSS_KEYS = ("loss", "task", "out", "feat")
STOP_FILE = "STOP"  # training.trainer.STOP_FILE: the trainer checkpoints and stops when it appears


# ---------------------------------------------------------------- pure helpers

def check_transition(old: str, new: str) -> None:
    """ValueError unless a job may go from status ``old`` to ``new``."""
    if new not in TRANSITIONS.get(old, set()):
        allowed = ", ".join(sorted(TRANSITIONS.get(old, set()))) or "nothing"
        raise ValueError(f"a {old} job cannot become {new} (from {old}: {allowed})")


def tail_lines(text: str, n: int = 40) -> list[str]:
    """The last ``n`` lines as a terminal shows them: a progress bar's ``\\r`` updates collapse to the latest."""
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        lines.append(parts[-1] if parts else line)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines[-n:] if n else []


def read_log_tail(path: str | Path, n: int = 40, max_bytes: int = 65536) -> list[str]:
    """``tail_lines`` of the end of a log file ([] when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        return tail_lines(f.read().decode("utf-8", "replace"), n)


def _error_line(log_tail: list[str]) -> str:
    for line in reversed(log_tail):
        s = line.strip()
        if s.startswith("error:") or (": " in s and s.split(": ", 1)[0].endswith(("Error", "Exception"))):
            return s
    return ""


def summarize_end(returncode: int | None, *, user_stopped: bool, log_tail: list[str],
                  output_exists: bool = False) -> tuple[str, str]:
    """``(status, message)`` for a job whose process ended.

    Args:
        returncode (`int` or `None`): the exit status (negative = killed by that signal); None when unknown (the
            process ended while no runner was attached to it).
        user_stopped (`bool`): cancel() was asked for this run.
        log_tail (`list[str]`): the last lines of the job's log (the reason is taken from them).
        output_exists (`bool`): the trainer exported its final output.
    """
    done = next((s[s.index("done:"):] for s in reversed(log_tail) if "done:" in s), "")  # the CLIs' last line
    if user_stopped and not output_exists:  # a graceful stop exits 0 without exporting
        return "cancelled", "cancelled by the user"
    if returncode == 0 or (returncode is None and done and output_exists):
        return "finished", done or "finished"
    text = "\n".join(log_tail)
    err = _error_line(log_tail)
    if "out of memory" in text.lower() or "OutOfMemoryError" in text:
        hint = "out of memory: lower batch_size or resolution, or enable gradient_checkpointing / mixed_precision"
    elif "non-finite loss" in text:
        hint = "NaN/inf loss: lower lr, check the data, or use fp32/bf16 (resume continues from the last good " \
               "checkpoint)"
    elif "Torch not compiled with CUDA" in text or "no CUDA" in text:
        hint = "no CUDA device: use mixed_precision 'no' on a CPU"
    elif "No such file or directory" in text or "FileNotFoundError" in text:
        hint = "a file or folder is missing"
    else:
        hint = ""
    if returncode is None:
        head = "the process ended while no runner was attached (exit status unknown)"
    elif returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        head = f"killed by signal {name}" + (" (by hand, or the out-of-memory killer)" if name == "SIGKILL" else "")
    elif returncode == 2:
        head = "the config was rejected (exit code 2)"
    elif returncode == 3:
        head = "stopped on a non-finite loss (exit code 3)" if "non-finite" in text else \
            "training stopped on an error (exit code 3)"
    else:
        head = f"training failed with exit code {returncode}"
    return "failed", "; ".join(s for s in (head, hint, err) if s)


class MetricsLog:
    """Rows of a trainer ``log.csv`` as numbers, one per step (a resumed run's replayed steps replace the old ones).
    Reads incrementally: only appended complete lines are parsed; a changed header (the trainer rewrites the file
    when columns appear) or a shorter file means a full re-read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header, self.offset, self.by_step, self._rows = b"", 0, {}, []

    def rows(self) -> list[dict]:
        if not self.path.exists():
            self.header, self.offset, self.by_step, self._rows = b"", 0, {}, []
            return []
        with open(self.path, "rb") as f:
            header = f.readline()
            size = f.seek(0, os.SEEK_END)
            if header != self.header or size < self.offset:
                self.header, self.offset, self.by_step = header, len(header), {}
            if size == self.offset:
                return self._rows
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        chunk = chunk[:chunk.rfind(b"\n") + 1]  # complete lines only; a half-written one waits
        self.offset += len(chunk)
        names = next(csv.reader([header.decode("utf-8", "replace")]), [])
        for values in csv.reader(chunk.decode("utf-8", "replace").splitlines()):
            try:
                row = {k: float(v) for k, v in zip(names, values, strict=True) if v != ""}
                self.by_step[int(row["step"])] = row | {"step": int(row["step"])}
            except (KeyError, ValueError):
                continue
        self._rows = [self.by_step[s] for s in sorted(self.by_step)]
        return self._rows


def read_metrics(path: str | Path) -> list[dict]:
    """``MetricsLog(path).rows()`` once."""
    return MetricsLog(path).rows()


def estimate_progress(rows: list[dict], total: int, window: int = 20) -> dict:
    """step/total, seconds per step over the last ``window`` steps of the latest run, ETA and the last losses."""
    out = {"step": 0, "total": total, "sec_per_step": None, "eta_s": None, "loss": None}
    if not rows:
        return out
    last = rows[-1]
    out["step"], out["loss"] = last["step"], last.get("loss")
    i = len(rows) - 1  # walk back over the latest run (its "seconds" clock restarts at each resume)
    while i > 0 and len(rows) - i < window and "seconds" in rows[i - 1] and \
            rows[i - 1].get("seconds", 0) <= rows[i].get("seconds", -1):
        i -= 1
    first = rows[i]
    steps = last["step"] - first["step"]
    if steps > 0 and "seconds" in last:
        out["sec_per_step"] = (last["seconds"] - first["seconds"]) / steps
        out["eta_s"] = out["sec_per_step"] * max(0, total - last["step"])
    return out


def format_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def config_class(kind: str) -> type:
    """The config dataclass of a job kind (the TrainConfig subclass its CLI module defines)."""
    from training.trainer import TrainConfig

    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; kinds: {', '.join(KINDS)}")
    try:
        module = importlib.import_module(KINDS[kind])
    except ModuleNotFoundError as e:
        raise ValueError(f"job kind {kind!r} is not available: {e}") from e
    found = {v for v in vars(module).values() if isinstance(v, type) and issubclass(v, TrainConfig)}
    found = [c for c in found if not any(o is not c and issubclass(o, c) for o in found)]  # most derived
    if len(found) != 1:
        raise ValueError(f"{KINDS[kind]}: expected one TrainConfig subclass; found {[c.__name__ for c in found]}")
    return found[0]


def validate_config(kind: str, config: dict) -> dict:
    """The config as the job kind's dataclass normalises it; its ValueError when a field is wrong."""
    if not isinstance(config, dict):
        raise ValueError(f"a job config is a JSON object of config fields; got {type(config).__name__}")
    return config_class(kind).from_dict(dict(config)).to_dict()


def final_output(kind: str, train_dir: str | Path) -> list[Path]:
    """What a finished run exported: a distilled student folder (``final/``), or a LoRA file + its config, which
    ``training.lora`` writes at the top of its output_dir; [] when absent."""
    train_dir = Path(train_dir)
    if kind == "lora":
        weights = train_dir / "pytorch_lora_weights.safetensors"
        return [p for p in (weights, train_dir / "lora_config.json") if p.exists()] if weights.exists() else []
    return [train_dir / "final"] if (train_dir / "final").is_dir() else []


def command_line(kind: str, config_path: str | Path, *, resume: bool = False) -> list[str]:
    """The CLI a job runs (and a user can copy)."""
    return [sys.executable, "-m", KINDS[kind], "--config", str(config_path)] + (["--resume", "latest"] if resume
                                                                                  else [])


# ---------------------------------------------------------------- presets

_LORA_SDXL = dict(rank=16, alpha=16.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"], snr_gamma=5.0,
                  buckets=[[1024, 1024]], batch_size=1, grad_accum=4, lr=1e-4, lr_scheduler="constant", steps=2000,
                  mixed_precision="fp16", gradient_checkpointing=True, checkpoint_every=250, validate_every=250,
                  dataset="data/my-lora-dataset", validation_prompts=["a photo of sks dog in a bucket"],
                  validation_steps=25)
PRESETS: dict[str, tuple[str, str | None, dict]] = {  # label -> (kind, configs/*.toml it starts from, overrides)
    "demo student (CPU, 5 min)": ("distill", "distill-demo-vega.toml", dict(  # ~1 s/step on 2 CPU cores
        steps=250, batch_size=8, lr_warmup_steps=10, max_minutes=5.0, checkpoint_every=25, validate_every=50,
        dataset_count=1024)),
    "demo student, SSD-1B recipe (CPU)": ("distill", "distill-demo-ssd.toml", {}),
    "SSD-1B from SDXL (GPU)": ("distill", "distill-ssd1b-from-sdxl.toml", {}),
    "Vega from SDXL (GPU)": ("distill", "distill-ssd1b-from-sdxl.toml", dict(student="vega")),
    "LoRA on the demo teacher (CPU)": ("lora", "lora-demo-orange.toml", dict(max_minutes=10.0)),
    "LoRA on SDXL (GPU)": ("lora", None, _LORA_SDXL | dict(base_model="sdxl")),
    "LoRA on SSD-1B (GPU)": ("lora", None, _LORA_SDXL | dict(base_model="ssd-1b")),
    "LoRA on Vega (GPU)": ("lora", None, _LORA_SDXL | dict(base_model="vega")),
}


def preset_config(label: str) -> tuple[str, dict]:
    """``(kind, config dict)`` of a preset: its example config (configs/*.toml) plus the preset's overrides, without
    ``output_dir`` (a job writes into its own folder). Not validated: a GPU preset names folders to fill in."""
    import tomllib

    if label not in PRESETS:
        raise ValueError(f"unknown preset {label!r}; presets: {', '.join(PRESETS)}")
    kind, file, overrides = PRESETS[label]
    config = {}
    if file is not None:
        path = REPO_ROOT / "configs" / file
        if path.exists():
            config = tomllib.loads(path.read_text())
    config = config | overrides
    config.pop("output_dir", None)
    sdxl = _cached_snapshot("stabilityai/stable-diffusion-xl-base-1.0")
    if sdxl and kind == "distill" and config.get("base_name") == "sdxl":
        config["teachers"] = [{"path": sdxl, "weight": 1.0}]  # the hub cache's folder instead of a placeholder
    return kind, config


def _cached_snapshot(repo_id: str) -> str | None:
    """Local folder of a hub repo already in the Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or offline: the preset keeps its placeholder path
        return None


# ---------------------------------------------------------------- registry records

@dataclass
class Job:
    id: str
    kind: str
    name: str  # registry name of the output model / LoRA
    status: str = "queued"
    submitted: float = 0.0
    queued_at: float = 0.0  # FIFO key (a resumed job goes to the back)
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    create_time: float | None = None  # psutil start time: a recycled pid is not our job
    returncode: int | None = None
    message: str = ""
    runs: int = 0  # processes started (1 + resumes)
    resume: bool = False  # the next start passes --resume latest
    cancel_requested: float | None = None
    signals_sent: int = 0  # cancel escalation reached: 1 SIGINT, 2 SIGTERM, 3 SIGKILL
    cwd: str = ""
    command: list = field(default_factory=list)
    output: str = ""  # registered model / LoRA folder
    slot: int = 0  # which slot (GPU index when there are several) the latest run used

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def default_slots() -> int:
    """One job per GPU; one on a CPU-only machine."""
    try:
        import torch
        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


# ---------------------------------------------------------------- runner

def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def check_config_paths(config: dict, roots: list[Path]) -> None:
    """Refuse a config naming a local file or folder outside ``roots`` (hub ids and recipe names pass)."""
    for text in _strings(config):
        if text.startswith(("/", ".", "~")) or (text and Path(text).exists()):
            resolve_inside(text, roots)


class JobRunner:
    """Persistent job registry + process manager; see the module docstring. Thread-safe; several runners (processes)
    may share one root (mutations hold a file lock)."""

    def __init__(self, root: str | Path | None = None, *, slots: int | None = None, grace_s: float = 60.0,
                 env: dict | None = None, register_outputs: bool = True):
        self.root = Path(root) if root is not None else data_dir() / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.slots = slots or default_slots()
        self.grace_s = grace_s  # cancel: STOP file; SIGINT, SIGTERM, SIGKILL after 1, 2, 3 x grace_s
        self.env = dict(env or {})
        self.register_outputs = register_outputs
        self._procs: dict[str, subprocess.Popen] = {}
        self._metrics: dict[str, MetricsLog] = {}
        self._lock = threading.RLock()
        self._watcher: threading.Thread | None = None
        self.poll()  # re-attach to or fail the jobs of an earlier runner, start queued ones

    # storage
    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"bad job id {job_id!r}")
        return self.root / job_id

    def status(self, job_id: str) -> Job:
        path = self.job_dir(job_id) / STATUS_FILE
        if not path.exists():
            raise ValueError(f"no job {job_id!r} in {self.root}")
        return Job.from_dict(json.loads(path.read_text()))

    def _save(self, job: Job) -> None:
        path = self.job_dir(job.id) / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(job), indent=1) + "\n")
        os.replace(tmp, path)

    def _set(self, job: Job, status: str, message: str = "") -> None:
        check_transition(job.status, status)
        job.status, job.message = status, message
        self._save(job)

    def list(self) -> list[Job]:
        """Every job, oldest submission first."""
        jobs = []
        for path in self.root.glob(f"*/{STATUS_FILE}"):
            try:
                jobs.append(Job.from_dict(json.loads(path.read_text())))
            except (json.JSONDecodeError, TypeError):
                continue
        return sorted(jobs, key=lambda j: (j.submitted, j.id))

    @contextmanager
    def _locked(self):
        with self._lock, open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # public API
    def submit(self, kind: str, config: dict, *, name: str = "", roots: list[Path] | None = None) -> str:
        """Validate ``config`` with the kind's dataclass (ValueError before anything runs), freeze it in a new job
        folder and queue it; returns the job id. ``output_dir`` is always the job's ``train/`` folder.
        ``roots`` (remote callers: the UI/API) confines every local path in the config to those folders."""
        config = dict(config)
        if roots is not None:
            check_config_paths({k: v for k, v in config.items() if k != "output_dir"}, roots)
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(2)}"
        job_dir = self.job_dir(job_id)
        config["output_dir"] = str(job_dir / TRAIN_DIR)
        if kind == "distill" and not config.get("base_name"):
            config["base_name"] = _registry_name_of(config.get("teachers"))
        frozen = validate_config(kind, config)
        name = _model_name(name or f"{kind}-{job_id}")
        with self._locked():
            job_dir.mkdir(parents=True)
            (job_dir / CONFIG_FILE).write_text(json.dumps(frozen, indent=1) + "\n")
            now = time.time()
            self._save(Job(job_id, kind, name, submitted=now, queued_at=now, cwd=os.getcwd(),
                           command=command_line(kind, job_dir / CONFIG_FILE)))
        self.poll()
        return job_id

    def cancel(self, job_id: str, *, wait_s: float = 0.0) -> Job:
        """Queued: cancelled now. Running: ``train/STOP``, which the trainer honours at its next step (checkpoint,
        then exit); if the process is still there after ``grace_s``, SIGINT to its process group, then SIGTERM and
        SIGKILL ``grace_s`` apart (``poll`` escalates). ``wait_s`` > 0 waits for the process to end."""
        with self._locked():
            job = self.status(job_id)
            if job.status == "queued":
                self._set(job, "cancelled", "cancelled before it started")
                return job
            if job.status != "running":
                raise ValueError(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")
            if job.cancel_requested is None:
                job.cancel_requested = time.time()
                self._save(job)
                (self.job_dir(job_id) / TRAIN_DIR).mkdir(exist_ok=True)
                (self.job_dir(job_id) / TRAIN_DIR / STOP_FILE).touch()
        deadline = time.time() + wait_s
        while wait_s and time.time() < deadline and self.poll_job(job_id).status == "running":
            time.sleep(0.2)
        return self.status(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again; it continues from its newest checkpoint (``--resume latest``), or
        starts over when it has none."""
        from training.trainer import checkpoint_dirs

        with self._locked():
            job = self.status(job_id)
            check_transition(job.status, "queued")
            job.resume = bool(checkpoint_dirs(self.job_dir(job_id) / TRAIN_DIR))
            job.queued_at, job.cancel_requested, job.signals_sent = time.time(), None, 0
            job.returncode, job.pid = None, None
            self._set(job, "queued", "resuming from the newest checkpoint" if job.resume
                      else "no checkpoint yet: starts over")
        self.poll()
        return self.status(job_id)

    def delete(self, job_id: str) -> None:
        """Remove a job that is not running (its folder; a registered output model stays)."""
        with self._locked():
            job = self.status(job_id)
            if job.status == "running":
                raise ValueError(f"job {job_id} is running; cancel it first")
            self._procs.pop(job_id, None)
            self._metrics.pop(job_id, None)
            shutil.rmtree(self.job_dir(job_id))

    def poll(self) -> list[Job]:
        """Reap ended processes (status + reason, outputs registered), escalate slow cancels, start queued jobs
        (FIFO) while slots are free; returns every job."""
        with self._locked():
            jobs = self.list()
            for job in jobs:
                if job.status == "running":
                    self._check(job)
            running = [j for j in jobs if j.status == "running"]
            queued = sorted((j for j in jobs if j.status == "queued"), key=lambda j: (j.queued_at, j.id))
            for job in queued[:max(0, self.slots - len(running))]:
                job.slot = min(set(range(self.slots)) - {j.slot for j in running})
                self._start(job)
                running.append(job)
            return jobs

    def poll_job(self, job_id: str) -> Job:
        self.poll()
        return self.status(job_id)

    def watch(self, interval_s: float = 2.0) -> None:
        """Poll from a daemon thread (queued jobs start even when no browser is polling); idempotent."""
        if self._watcher is not None and self._watcher.is_alive():
            return

        def loop():
            while True:
                time.sleep(interval_s)
                try:
                    self.poll()
                except OSError as e:  # e.g. the root was removed under us; keep serving
                    print(f"jobs: poll failed: {e}", file=sys.stderr)

        self._watcher = threading.Thread(target=loop, name="jobs-watch", daemon=True)
        self._watcher.start()

    # job contents
    def config(self, job_id: str) -> dict:
        return json.loads((self.job_dir(job_id) / CONFIG_FILE).read_text())

    def log_tail(self, job_id: str, n: int = 40) -> list[str]:
        return read_log_tail(self.job_dir(job_id) / LOG_FILE, n)

    def metrics(self, job_id: str) -> list[dict]:
        """The job's CSV rows (kept per job and read incrementally: the page asks every few seconds)."""
        path = self.job_dir(job_id) / TRAIN_DIR / "log.csv"
        with self._lock:
            log = self._metrics.setdefault(job_id, MetricsLog(path))
            return log.rows()

    def progress(self, job_id: str) -> dict:
        return estimate_progress(self.metrics(job_id), int(self.config(job_id).get("steps", 0)))

    def latest_validation(self, job_id: str) -> Path | None:
        images = sorted((self.job_dir(job_id) / TRAIN_DIR / "validation").glob("step-*.png"))
        return images[-1] if images else None

    def outputs(self, job_id: str) -> list[Path]:
        """Files of the exported result, then the log and the metrics CSV."""
        d = self.job_dir(job_id)
        files = []
        for out in final_output(self.status(job_id).kind, d / TRAIN_DIR):
            files += sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]
        return files + [p for p in (d / LOG_FILE, d / TRAIN_DIR / "log.csv") if p.exists()]

    def shell_command(self, job_id: str) -> str:
        """The job's command for copy-paste (``--resume latest`` once it has a checkpoint)."""
        import shlex

        from training.trainer import checkpoint_dirs

        job = self.status(job_id)
        resume = bool(checkpoint_dirs(self.job_dir(job_id) / TRAIN_DIR))
        cmd = command_line(job.kind, self.job_dir(job_id) / CONFIG_FILE, resume=resume)
        return f"cd {shlex.quote(job.cwd)} && " + " ".join(shlex.quote(c) for c in ["python"] + cmd[1:])

    # processes
    def _start(self, job: Job) -> None:
        job_dir = self.job_dir(job.id)
        (job_dir / TRAIN_DIR / STOP_FILE).unlink(missing_ok=True)  # a previous cancel's request
        cmd = command_line(job.kind, job_dir / CONFIG_FILE, resume=job.resume)
        env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])} | self.env
        if self.slots > 1 and "CUDA_VISIBLE_DEVICES" not in self.env:
            env["CUDA_VISIBLE_DEVICES"] = str(job.slot)  # one GPU per slot
        with open(job_dir / LOG_FILE, "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} run {job.runs + 1}: {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=job.cwd or None, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs[job.id] = proc
        try:
            job.create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            job.create_time = None
        job.pid, job.started, job.ended, job.returncode = proc.pid, time.time(), None, None
        job.runs += 1
        job.command = cmd
        self._set(job, "running", "resumed from the newest checkpoint" if job.resume else "")

    def _alive(self, job: Job) -> bool:
        """Is the job's own process (same pid and start time) still running?"""
        if job.pid is None:
            return False
        try:
            p = psutil.Process(job.pid)
            if job.create_time is not None and abs(p.create_time() - job.create_time) > 0.5:
                return False  # the pid was recycled
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def _returncode(self, job: Job) -> int | None:
        """Exit status of an ended process: from our Popen, else from waitpid when it is still our child."""
        proc = self._procs.pop(job.id, None)
        if proc is not None:
            return proc.wait()
        try:
            if job.create_time is None or abs(psutil.Process(job.pid).create_time() - job.create_time) > 0.5:
                return None  # gone, or the pid now belongs to another process: never reap that one
            pid, status = os.waitpid(job.pid, os.WNOHANG)  # our zombie child (an earlier runner in this process)
            return os.waitstatus_to_exitcode(status) if pid else None
        except (psutil.NoSuchProcess, ChildProcessError, OSError, TypeError):
            return None

    def _check(self, job: Job) -> None:
        proc = self._procs.get(job.id)
        ended = proc.poll() is not None if proc is not None else not self._alive(job)
        if not ended:
            if job.cancel_requested is not None:
                level = min(3, int((time.time() - job.cancel_requested) // self.grace_s))
                if level > job.signals_sent:  # 1: SIGINT, 2: SIGTERM, 3: SIGKILL, each sent once
                    self._signal(job, (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[level - 1])
                    job.signals_sent = level
                    self._save(job)
            return
        job.returncode = self._returncode(job)
        job.ended = time.time()
        train = self.job_dir(job.id) / TRAIN_DIR
        status, message = summarize_end(job.returncode, user_stopped=job.cancel_requested is not None,
                                        log_tail=self.log_tail(job.id, 60),
                                        output_exists=bool(final_output(job.kind, train)))
        if status == "finished" and self.register_outputs:
            try:
                job.output = str(self._register(job))
                message += f"; registered as {Path(job.output).name}"
            except OSError as e:
                message += f"; registering the output failed: {e}"
        elif status != "finished":
            from training.trainer import checkpoint_dirs

            ckpts = checkpoint_dirs(train)
            message += f"; resume continues from {ckpts[-1].name}" if ckpts else "; no checkpoint was saved"
        self._set(job, status, message)

    def _signal(self, job: Job, sig: int) -> None:
        if not self._alive(job):
            return
        try:
            os.killpg(os.getpgid(job.pid), sig)  # the whole tree (accelerate launch spawns workers)
        except (ProcessLookupError, PermissionError):
            pass

    def _register(self, job: Job) -> Path:
        """Copy (hard links where possible) the exported student into the models dir, a LoRA into
        ``models/loras/<name>/``, where the Generate tab finds them."""
        sources = final_output(job.kind, self.job_dir(job.id) / TRAIN_DIR)
        if not sources:
            raise OSError("the job exported nothing")
        root = models_dir() / "loras" if job.kind == "lora" else models_dir()
        root.mkdir(parents=True, exist_ok=True)
        dst, i = root / job.name, 1
        while dst.exists():
            i += 1
            dst = root / f"{job.name}-{i}"

        def link(s, d):
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)

        if sources[0].is_dir():
            shutil.copytree(sources[0], dst, copy_function=link)
        else:
            dst.mkdir()
            for src in sources:
                link(src, dst / src.name)
        return dst


def _model_name(text: str) -> str:
    """A registry-safe name (lower-case letters, digits, '.', '_', '-'; at most 64 characters)."""
    name = safe_name(text)
    if not name:
        raise ValueError(f"name {text!r} has no usable characters (use letters, digits, '.', '_' or '-')")
    return name


def _registry_name_of(teachers) -> str:
    """Registry name of the first teacher folder when the registry lists it (so the student names its base)."""
    from studio.registry import list_models

    if not teachers:
        return ""
    first = teachers[0] if not isinstance(teachers, str) else teachers.split(",")[0].split("@")[0]
    path = first.get("path") if isinstance(first, dict) else first
    if not path or not Path(path).exists():
        return ""
    target = Path(path).resolve()
    for spec in list_models():
        if spec.source_kind == "folder" and Path(spec.source).resolve() == target:
            return spec.name
    return ""
