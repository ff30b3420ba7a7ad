"""Benchmarks: every speed and memory number in the README and under ``assets/bench/`` comes from one of these commands,
measured side by side in one run (interleaved repetitions, medians, spreads, the load average next to them).

    python -m studio bench --model demo-teacher --model demo-vega --steps 20 --repeats 5   # whole generations
    python -m studio bench unet --resolution 256 --threads 2          # real SDXL / SSD-1B / Vega UNet forwards
    python -m studio bench memory                                     # shared components vs separate loads
    python -m studio bench side-by-side                               # a three-model run vs three single runs
    python -m studio bench options --model demo-teacher --prompts 96  # each speed option: speed-up, quality cost

Modules: ``generate`` (whole generations of loaded models), ``unet``, ``family`` (memory, side-by-side),
``options``, ``stats`` (summaries, machine state, report files), ``cli`` (the subcommands).
"""
from studio.bench.generate import BENCH_COLUMNS, bench_generate

__all__ = ["BENCH_COLUMNS", "bench_generate"]
