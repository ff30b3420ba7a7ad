"""One line per speed option for the Generate tab, from the committed ``bench options`` reports (never typed by hand).

    notes = option_notes()          # {"feature_reuse": "measured on demo-teacher ...: 2 -> 1.9x faster, ...", ...}
    notes["source"]                 # the commands that produced the numbers
"""
from __future__ import annotations

import json
from pathlib import Path

from studio.paths import ASSETS_DIR

BENCH_DIR = ASSETS_DIR / "bench"
REPORTS = (BENCH_DIR / "options-demo-teacher.json",  # every option alone on the demo teacher
           BENCH_DIR / "compile-demo-teacher.json",  # torch.compile: compile time apart, fewer prompts
           BENCH_DIR / "feature-reuse-demo.json")  # the reuse curve on the three demo models
FIELD_LABELS = {  # which report rows describe each widget
    "attention": ("attention=classic",), "channels_last": ("channels_last=true",), "fuse_qkv": ("fuse_qkv=true",),
    "vae_decode": ("vae_decode=tiled",), "vae": ("vae=taesdxl",), "compile": ("compile=regional", "compile=full"),
    "low_vram": ("low_vram=true",),
    "feature_reuse": tuple(f"feature_reuse={n}" for n in range(2, 11)),
}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _describe(label: str, row: dict, n: int) -> str:
    value = label.split("=", 1)[1]
    parts = [f"{value}: {row['speedup']:.2f}× the default's speed"]
    if "compile_s" in row:
        parts.append(f"compile {row['compile_s']:.0f} s")
    if "evaluator_drop_points" in row:
        parts.append(f"evaluator {0.0 - row['evaluator_drop_points'] + 0.0:+.1f} pt")
    q = row["quality"]
    parts.append("images identical" if q["identical_images"] == n else f"SSIM {q['ssim_mean']:.3f}")
    return ", ".join(parts)


def option_notes(*reports: Path) -> dict[str, str]:
    """Field name -> what the committed reports (default: ``REPORTS``; a missing one is left out) measured for it
    (speed-up, quality cost), plus "source": the commands and conditions. An option a report skipped says why; a
    later report that measured the same field describes it (the reuse curve has more intervals)."""
    notes, sources = {}, []
    for report in (r for r in map(_read, reports or REPORTS) if r):
        model, env = report["models"][0], report["environment_before"]
        sources.append(f"`{report['command']}` ({model}, {report['prompts']} prompts, {report['device']}, "
                       f"{env['torch_threads']} thread(s), load {env['load_average'][0]})")
        rows, skipped = report["results"].get(model, {}), report.get("skipped", {}).get(model, {})
        for field, labels in FIELD_LABELS.items():
            found = [_describe(label, rows[label], report["prompts"]) for label in labels if label in rows]
            found += [f"{label.split('=', 1)[1]}: not measured — {skipped[label]}" for label in labels
                      if label in skipped]
            if found:
                notes[field] = f"measured on {model}: " + "; ".join(found)
    notes["source"] = "Measured by " + "; ".join(sources) if sources else "No committed bench report found."
    return notes
