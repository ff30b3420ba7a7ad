"""Training jobs: a persistent FIFO queue of subprocesses running the training CLIs, one per slot (GPU).

    runner = JobRunner()                                   # root: <data dir>/jobs, slots: one per GPU (1 on CPU)
    job_id = runner.submit("distill", {"teachers": [{"path": "assets/demo/teacher"}], "steps": 300})
    runner.poll(); runner.status(job_id).status, runner.progress(job_id)   # reap finished, start queued

Every job is the command a user could run by hand (``python -m training.<kind> --config <job>/config.json``, plus
``--resume latest``) in its own folder: ``config.json`` (frozen, validated), ``status.json``, ``stdout.log`` and
``train/`` (the trainer's output_dir). The runner never imports ``training``: it validates with
``studio.train_config`` and reads the files the trainers write. Cancel asks the trainer to stop through
``train/STOP`` and escalates to signals if it does not. A new runner on the same root (any process) re-attaches to
running jobs (pid + start time) or marks them failed; jobs outlive a restart. Outputs are hard-linked into the
models dir (the Generate tab lists them). No gradio here.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from studio.jobs.kinds import PathPolicy, command_line, final_output, model_name, prepare_config
from studio.jobs.status import MetricsLog, check_transition, estimate_progress, read_log_tail, summarize_end
from studio.paths import REPO_ROOT, data_dir, models_dir
from studio.train_config.base import STOP_FILE, checkpoint_dirs, request_stop

LOG_FILE, STATUS_FILE, CONFIG_FILE, TRAIN_DIR = "stdout.log", "status.json", "config.json", "train"
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ACTIVE = ("queued", "running")  # what the queue cap counts


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
    owner: str = ""  # who submitted it (studio.hosting.Visitor.key; "" from the command line / older runners)

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except ImportError:
        return 0


def default_slots() -> int:
    """One job per GPU; one on a CPU-only machine."""
    return max(1, _gpu_count())


def job_gpu(slot: int) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value of the job in ``slot``: one of the GPUs the studio itself may use (its own
    ``CUDA_VISIBLE_DEVICES`` list, else every GPU), or "" (no GPU) on a CPU-only machine."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible is not None else \
        [str(i) for i in range(_gpu_count())]
    return gpus[slot % len(gpus)] if gpus else ""


def gpu_handover(cache) -> Callable[["Job"], str]:
    """A ``before_start`` hook for the app: a job about to run on the GPU where the app's model cache holds models
    gets that GPU emptied first (the models reload on the next generation); returns a note for the job's status."""
    def hook(job: Job) -> str:
        if cache.runtime.device.type != "cuda" or not cache.loaded() or job_gpu(job.slot) != job_gpu(0):
            return ""
        held = cache.memory_bytes()
        cache.clear()
        import torch

        torch.cuda.empty_cache()
        return f"the studio unloaded its models ({held / 2**30:.1f} GiB) from GPU {job_gpu(0)} for this job"
    return hook


def auto_name(job_id: str) -> str:
    """The output name of a job given none: ``distill-20261202-0117-9762`` for job ``20261202-011756-distill-9762``
    (kind first, each part once; minutes are enough beside the random suffix)."""
    day, clock, kind, suffix = job_id.split("-", 3)
    return f"{kind}-{day}-{clock[:4]}-{suffix}"


# ---------------------------------------------------------------- runner

class JobRunner:
    """Persistent job registry + process manager; see the module docstring. Thread-safe; several runners (processes)
    may share one root (mutations hold a file lock)."""

    def __init__(self, root: str | Path | None = None, *, slots: int | None = None, grace_s: float = 60.0,
                 env: dict | None = None, register_outputs: bool = True,
                 before_start: Callable[[Job], str] | None = None):
        self.root = Path(root) if root is not None else data_dir() / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.slots = slots or default_slots()
        self.grace_s = grace_s  # cancel: STOP file; SIGINT, SIGTERM, SIGKILL after 1, 2, 3 x grace_s
        self.env = dict(env or {})
        self.register_outputs = register_outputs
        self.before_start = before_start  # e.g. free the app's GPU models; returns a note for the job's status
        self._procs: dict[str, subprocess.Popen] = {}
        self._metrics: dict[str, MetricsLog] = {}
        self._lock = threading.RLock()
        self._watcher: threading.Thread | None = None
        self.poll()  # re-attach to or fail the jobs of an earlier runner, start queued ones

    # storage
    def job_dir(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise ValueError(f"bad job id {str(job_id)[:120]!r}")
        return self.root / job_id

    def status(self, job_id: str) -> Job:
        path = self.job_dir(job_id) / STATUS_FILE
        if not path.exists():
            raise ValueError(f"no job {job_id!r}")
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
    def submit(self, kind: str, config: dict, *, name: str = "", policy: PathPolicy | None = None, owner: str = "",
               max_queued: int | None = None) -> str:
        """Validate ``config`` (``prepare_config``: ValueError before anything runs or is written), freeze it in a
        new job folder and queue it; returns the job id. ``output_dir`` is always the job's ``train/`` folder.
        ``policy`` (remote callers: the UI/API) confines every path in the config to its folders; ``owner`` is
        recorded; ``max_queued`` refuses a job when that many are already queued or running."""
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(2)}"
        job_dir = self.job_dir(job_id)
        frozen = prepare_config(kind, config, output_dir=job_dir / TRAIN_DIR, policy=policy)
        name = model_name(name or auto_name(job_id))
        with self._locked():
            self._check_queue(max_queued)
            job_dir.mkdir(parents=True)
            (job_dir / CONFIG_FILE).write_text(json.dumps(frozen, indent=1, allow_nan=False) + "\n")
            now = time.time()
            self._save(Job(job_id, kind, name, submitted=now, queued_at=now, cwd=os.getcwd(),
                           command=command_line(kind, job_dir / CONFIG_FILE), owner=str(owner)))
        self.poll()
        return job_id

    def _check_queue(self, max_queued: int | None) -> None:
        if max_queued is None:
            return
        active = sum(job.status in ACTIVE for job in self.list())
        if active >= max_queued:
            raise ValueError(f"the job queue is full: {active} jobs are queued or running and this studio takes at "
                             f"most {max_queued}; wait for one to finish or cancel one")

    def cancel(self, job_id: str, *, at_step: int | None = None, wait_s: float = 0.0) -> Job:
        """Queued: cancelled now. Running: ``train/STOP``, which the trainer honours before its next step, or once
        step ``at_step`` is done (checkpoint, then exit 0); if the process is still there ``grace_s`` after the
        request, SIGINT to its process group, then SIGTERM and SIGKILL ``grace_s`` apart (``poll`` escalates).
        ``wait_s`` > 0 waits for the process to end."""
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
                request_stop(self.job_dir(job_id) / TRAIN_DIR, at_step=at_step)
        deadline = time.time() + wait_s
        while wait_s and time.time() < deadline and self.poll_job(job_id).status == "running":
            time.sleep(0.2)
        return self.status(job_id)

    def resume(self, job_id: str, *, max_queued: int | None = None) -> Job:
        """Queue a failed or cancelled job again; it continues from its newest checkpoint (``--resume latest``), or
        starts over when it has none. ``max_queued`` as in `submit`."""
        with self._locked():
            job = self.status(job_id)
            check_transition(job.status, "queued")
            self._check_queue(max_queued)
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
        if "CUDA_VISIBLE_DEVICES" not in self.env:
            env["CUDA_VISIBLE_DEVICES"] = job_gpu(job.slot)  # every job sees exactly its own GPU (or none)
        note = self.before_start(job) if self.before_start is not None else ""
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
        self._set(job, "running", "; ".join(m for m in ("resumed from the newest checkpoint" if job.resume else "",
                                                         note) if m))

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
