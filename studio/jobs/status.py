"""What a job's files say, as pure functions: status transitions, the log tail, why a run ended, the metrics CSV and
progress / ETA (tested with tables of cases, no processes).

    status, message = summarize_end(returncode, user_stopped=False, log_tail=read_log_tail("stdout.log"))
    progress = estimate_progress(MetricsLog("train/log.csv").rows(), total=300)
"""
from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

LOSS_KEYS = ("loss", "task", "out", "feat")  # loss columns the trainers log (the Train tab plots these)
TRANSITIONS = {  # allowed status changes; "resume" re-queues a failed or cancelled job
    "queued": {"running", "cancelled"},
    "running": {"finished", "failed", "cancelled"},
    "failed": {"queued"},
    "cancelled": {"queued"},
    "finished": set(),
}


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
