"""The Train tab's loss plot: one named line per loss term, on a log scale when the terms span decades (the feature
loss of a distillation is ~100x the task loss, which a linear axis flattens to zero).

    fig = loss_figure(runner.metrics(job_id))     # a matplotlib Figure (no pyplot), or None before the first step
"""
from __future__ import annotations

from studio.jobs.status import LOSS_KEYS

SERIES_LABELS = {  # the trainers log the raw terms; "loss" is the weighted sum that is optimised
    "loss": "loss (optimised: λ_task·task + λ_out·out + λ_feat·feat)",
    "task": "task: MSE to the true noise",
    "out": "out: MSE to the teacher's output",
    "feat": "feat: Σ MSE to the teacher's features",
}
LOG_SPAN = 20.0  # max / min of the plotted values above which the y axis is logarithmic


def thin(rows: list[dict], max_points: int = 1500) -> list[dict]:
    """About ``max_points`` evenly spaced rows of a long run, the last one kept."""
    return rows[::-(-len(rows) // max_points)] + rows[-1:] if len(rows) > max_points else rows


def loss_figure(rows: list[dict], *, title: str = ""):
    """Every logged loss term against the step, each named in the legend; log y axis when the positive values span
    more than ``LOG_SPAN``x. None when no step has been logged yet."""
    from matplotlib.figure import Figure

    rows = thin(rows)
    series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in LOSS_KEYS}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    values = [y for v in series.values() for _, y in v if y > 0]
    log = bool(values) and max(values) > LOG_SPAN * min(values)
    fig = Figure(figsize=(7.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for key, points in series.items():
        ax.plot([s for s, _ in points], [y for _, y in points], label=SERIES_LABELS.get(key, key),
                linewidth=2.2 if key == "loss" else 1.3)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)" if log else "loss")
    ax.grid(alpha=0.3, which="both" if log else "major")
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)  # beneath: never over a line
    if title:
        ax.set_title(title, fontsize=10)
    return fig
