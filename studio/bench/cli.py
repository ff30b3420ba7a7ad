"""``python -m studio bench unet|memory|side-by-side|options``: the benchmark subcommands (``python -m studio bench
--model ...`` without one times whole generations, ``studio.cli``). Each prints a table, then with ``--json`` the
report as JSON last; ``--out FILE`` also writes the report (with the command line) for the README and the UI.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from studio.bench.stats import command_line, write_report
from studio.registry import CONFIGS_DIR

CONFIGS_HELP = "folder of <model>/<component>/config.json for sdxl, ssd-1b and vega (default: the released ones)"


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def _finish(args, report: dict, table: str) -> int:
    report = {"command": command_line(getattr(args, "argv", None)), **report}
    write_report(report, args.out)
    print(table)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


def _threads(args) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)


def cmd_unet(args) -> int:
    from studio.bench.unet import bench_unet, format_unet, released_configs

    report = bench_unet(released_configs(args.configs), resolution=args.resolution, dtype=args.dtype, device=args.device,
                        batch=args.batch, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                        log=_log)
    return _finish(args, report, format_unet(report))


def _runtime(args):
    from studio.loading import Runtime, choose_runtime

    runtime = choose_runtime()
    if args.dtype:
        from studio.smoke import DTYPES

        runtime = Runtime(runtime.device, DTYPES[args.dtype])
    return runtime


def format_memory(r: dict) -> str:
    mb = 2**20
    s = r["shared"]
    return "\n".join([
        f"{' + '.join(r['models'])}, {r['dtype']} on {r['device']}",
        f"shared load (ModelCache): {s['bytes'] / mb:,.1f} MiB ({s['storage_bytes'] / mb:,.1f} MiB of distinct "
        f"storages, {s['text_encoder_vae_sets']} text-encoder/VAE set, process RSS +{s['rss_added_bytes'] / mb:,.1f} "
        "MiB)",
        f"three UNets + one text-encoder/VAE set (safetensors headers): {r['ideal_bytes'] / mb:,.1f} MiB -> ratio "
        f"{r['ratio_shared_to_ideal']:.4f} (goal <= 1.05)",
        f"loaded separately: {r['separate_total_bytes'] / mb:,.1f} MiB = "
        + " + ".join(f"{m} {b / mb:,.1f}" for m, b in r["separate_bytes"].items())
        + f" -> {r['ratio_separate_to_shared']:.2f}x the shared load"])


def format_side_by_side(r: dict) -> str:
    lines = [f"side by side, {r['request']['steps']} steps at {r['request']['width'] or 'native'} px, {r['dtype']} on "
             f"{r['device']}, {r['repeats']} repeats, load {r['environment_before']['load_average'][0]} -> "
             f"{r['environment_after']['load_average'][0]}"]
    for cand, t in r["times"].items():
        lines.append(f"{cand:<40} median {t['median_s']:.3f} s (p25-p75 {t['p25_s']:.3f}-{t['p75_s']:.3f})")
    lines.append(f"three-model run / sum of single runs = {r['ratio']:.3f} (paired median "
                 f"{r['paired_ratio']['median_s']:.3f}; goal <= 1.05)")
    return "\n".join(lines)


def cmd_memory(args) -> int:
    from studio.bench.family import DEMO_FAMILY, bench_memory, run_real

    if args.real:
        report = run_real("memory", args.workdir, args.dtype or "bf16", [], configs=args.configs, log=_log)
    else:
        report = bench_memory(args.model or list(DEMO_FAMILY), _runtime(args), log=_log)
    return _finish(args, report, format_memory(report))


def cmd_side_by_side(args) -> int:
    from studio.bench.family import DEMO_FAMILY, bench_side_by_side, run_real
    from studio.generation import GenerateRequest

    _threads(args)
    if args.real:
        extra = ["--size", str(args.size or 256), "--steps", str(args.steps), "--repeats", str(args.repeats),
                 "--warmup", str(args.warmup)]
        report = run_real("side-by-side", args.workdir, args.dtype or "bf16", extra, configs=args.configs, log=_log)
    else:
        request = GenerateRequest(prompt="a red circle on a blue background", seed=0, steps=args.steps,
                                  width=args.size, height=args.size)
        report = bench_side_by_side(args.model or list(DEMO_FAMILY), request, _runtime(args), repeats=args.repeats,
                                    warmup=args.warmup, log=_log)
    return _finish(args, report, format_side_by_side(report))


@contextmanager
def _compile_cache(cold: bool):
    """An empty inductor cache for the run (compile time measured cold, as a first-time user pays it)."""
    if not cold:
        yield "warm (the machine's inductor cache)"
        return
    folder = tempfile.mkdtemp(prefix="studio-inductor-")
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    try:
        yield "cold (an empty inductor cache)"
    finally:
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def cmd_options(args) -> int:
    from studio.bench.options import bench_options, format_options
    from studio.loading import ModelCache

    _threads(args)
    cache = ModelCache(budget_bytes=1 << 50, runtime=_runtime(args))
    with _compile_cache(not args.warm_compile_cache) as compile_cache:
        report = bench_options(cache, args.model or ["demo-teacher"], args.option, prompts=args.prompts,
                               steps=args.steps, size=args.size, guidance=args.guidance, scheduler=args.scheduler,
                               max_minutes=args.max_minutes, log=_log)
    report["compile_cache"] = compile_cache
    return _finish(args, report, format_options(report))


def cmd_readme(args) -> int:
    from studio.bench.readme import README, write_readme

    written = write_readme(Path(args.readme) if args.readme else README)
    print(f"rewrote the speed blocks {', '.join(written)} of {args.readme or README}")
    return 0


def _common(parser, *, dtype: bool = True) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON after the table")
    parser.add_argument("--out", help="also write the report (JSON, with this command line) to this file")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, usually the core count)")
    if dtype:
        parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"),
                            help="weights' dtype (default: fp16 on CUDA, fp32 on a CPU)")


def register(subparsers) -> None:
    """Add the subcommands to ``python -m studio bench``'s subparsers."""
    unet = subparsers.add_parser("unet", help="UNet forward latency of SDXL, SSD-1B and Vega (random weights, "
                                              "released configs), ratios to SDXL")
    unet.add_argument("--resolution", type=int, default=256, help="image side in pixels (latent = 1/8)")
    unet.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    unet.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when present")
    unet.add_argument("--batch", type=int, default=1, help="images per forward (2 = one CFG step of one image)")
    unet.add_argument("--repeats", type=int, default=5)
    unet.add_argument("--warmup", type=int, default=1)
    unet.add_argument("--configs", type=Path, default=CONFIGS_DIR, help=CONFIGS_HELP)
    _common(unet, dtype=False)
    unet.set_defaults(func=cmd_unet)

    memory = subparsers.add_parser("memory", help="three family models loaded with shared components vs separately")
    side = subparsers.add_parser("side-by-side", help="a three-model run vs the sum of three single runs")
    for p in (memory, side):
        p.add_argument("--model", action="append", help="default: demo-teacher, demo-ssd, demo-vega")
        p.add_argument("--real", action="store_true",
                       help="SDXL, SSD-1B and Vega on their real shapes (random weights, offline hub cache)")
        p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "studio-real-family"),
                       help="--real: where the offline cache is built once and kept")
        p.add_argument("--configs", type=Path, default=CONFIGS_DIR, help="--real: " + CONFIGS_HELP)
        _common(p)
    side.add_argument("--steps", type=int, default=4)
    side.add_argument("--size", type=int, help="pixels (default: each model's native; --real: 256)")
    side.add_argument("--repeats", type=int, default=5)
    side.add_argument("--warmup", type=int, default=1)
    memory.set_defaults(func=cmd_memory)
    side.set_defaults(func=cmd_side_by_side)

    options = subparsers.add_parser("options", help="each speed option vs the default path: speed-up and "
                                                    "quality cost")
    options.add_argument("--model", action="append", help="repeatable (default: demo-teacher)")
    options.add_argument("--option", action="append",
                         help="field=value[,field=value] over attention, channels_last, fuse_qkv, vae_decode, vae, "
                              "feature_reuse, feature_reuse_branch, compile, low_vram; repeatable (default: each "
                              "option alone)")
    options.add_argument("--prompts", type=int, default=96, help="prompts (and seeds): the repetitions")
    options.add_argument("--steps", type=int, help="default: the first model's")
    options.add_argument("--size", type=int, help="pixels (default: each model's native size)")
    options.add_argument("--guidance", type=float, help="default: the first model's")
    options.add_argument("--scheduler", default="Euler")
    options.add_argument("--max-minutes", type=float,
                         help="stop timing new prompts after this many minutes (the report says how many ran)")
    options.add_argument("--warm-compile-cache", action="store_true",
                         help="keep the machine's inductor cache (default: compile into an empty one)")
    _common(options)
    options.set_defaults(func=cmd_options)

    readme = subparsers.add_parser("readme", help="rewrite the README's speed tables from assets/bench/*.json")
    readme.add_argument("--readme", help="the file to rewrite (default: the repository's README.md)")
    readme.set_defaults(func=cmd_readme)
