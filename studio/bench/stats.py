"""What every benchmark reports the same way: a summary of repeated timings, the machine's state next to them, the
order in which interleaved candidates take turns, and the JSON file a committed command writes.

    order = rotated(["sdxl", "ssd-1b", "vega"], i)        # repeat i starts with a different candidate
    summary([1.2, 1.1, 1.3])                              # median, min, max, quartiles, relative spread
    write_report(report, "assets/bench/unet.json")        # with the command line that produced it
    storage_bytes([unet_a, unet_b])                        # bytes actually allocated behind their tensors
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch


def rotated(items: list, i: int) -> list:
    """``items`` starting at position ``i`` (mod len): in an interleaved benchmark no candidate always runs first
    (after a slower or faster neighbour, or first after a pause), so position effects average out."""
    k = i % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), ``q`` in [0, 1]."""
    data = sorted(values)
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(runs: list[float]) -> dict:
    """Median, min, max, quartiles and the relative spread ((p75 - p25) / median) of timings in seconds."""
    if not runs:
        raise ValueError("no timed runs to summarise")
    med = statistics.median(runs)
    p25, p75 = quantile(runs, 0.25), quantile(runs, 0.75)
    return {"median_s": med, "min_s": min(runs), "max_s": max(runs), "p25_s": p25, "p75_s": p75,
            "spread": (p75 - p25) / med if med else 0.0, "n": len(runs), "runs_s": list(runs)}


def environment(device: torch.device | str | None = None) -> dict:
    """The conditions a timing was taken under: load average (1, 5, 15 min), threads, versions, the device."""
    device = torch.device(device or "cpu")
    out = {"load_average": [round(x, 2) for x in os.getloadavg()], "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def command_line(argv: list[str] | None = None) -> str:
    """How the report was produced, as one shell line."""
    args = sys.argv[1:] if argv is None else argv
    return "python -m studio " + " ".join(shlex.quote(a) for a in args)


def write_report(report: dict, out: str | Path | None) -> None:
    """Write ``report`` as indented JSON to ``out`` (parents created); nothing when ``out`` is None."""
    if out is None:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")


def storage_bytes(modules) -> int:
    """Bytes of the distinct storages behind the modules' parameters and buffers: tensors that share memory (views,
    shared modules) count once — what the allocations really hold, independent of module identity."""
    seen, total = set(), 0
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total
