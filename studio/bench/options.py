"""Speed options measured: what each one saves and what it costs in image fidelity, on the same prompts and seeds.

    python -m studio bench options --model demo-teacher --prompts 96 --threads 1
    python -m studio bench options --model demo-teacher --model demo-ssd --model demo-vega \\
        --option feature_reuse=2 --option feature_reuse=3 --prompts 96       # the reuse curve, across the family
    python -m studio bench options --model sdxl --size 1024 --steps 30 --option compile=regional,feature_reuse=3

An option is ``field=value[,field=value...]`` over the speed fields of ``GenerateRequest`` (attention, channels_last,
fuse_qkv, vae_decode, vae, feature_reuse, feature_reuse_branch) and of the model cache (compile, low_vram); a bare
name means ``=true``. Every option runs against the default path ("default"), on every model, through the Generate
tab's path (``compare.run_model``). Each (model, option) first gets one untimed call (its warm-up: loading, first
touch, compiling — for a compile option, compile time = warm-up minus the timed median); then for each prompt all
(model, option) pairs take turns in a rotating order, so a change of machine load hits all of them alike; the
prompts are the repetitions (``eval_prompts`` of the demo grammar for the demo family, the arena's general prompts
otherwise). Reported per (model, option): median latency of one image and its spread, speed-up = the model's default
median / this median (and the same against the first model's default: do options stack with a smaller model?), and
quality against the model's default image of the same prompt and seed: SSIM, PSNR, identical images and, when every
prompt is in the demo grammar, the analytic evaluator's accuracy and its drop in points.

A profile of the default path follows (forward hooks on a few extra calls, not in the timings): the share of one
generation spent in the text encoders, the UNet, the UNet's deep part (what feature reuse skips on a reused step,
branch 0), the VAE decode, and the rest (scheduler, pipeline) — the upper bound on what reuse or a tiny VAE can save.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import fields, replace

import numpy as np
import torch

from studio.ablation.metrics import psnr, ssim
from studio.bench.stats import environment, rotated, summary
from studio.compare import check_models, run_model
from studio.demo.evaluator import evaluate_batch
from studio.demo.shapes import eval_prompts
from studio.generation import GenerateRequest
from studio.loading import ModelCache, resolve_spec
from studio.paths import ASSETS_DIR
from studio.reuse import skipped_modules
from studio.speed import COMPILE, check_choice, check_flag

REQUEST_OPTIONS = ("attention", "channels_last", "fuse_qkv", "vae_decode", "vae", "feature_reuse",
                   "feature_reuse_branch")
CACHE_OPTIONS = ("compile", "low_vram")
DEFAULT_OPTIONS = ("attention=classic", "channels_last", "fuse_qkv", "vae_decode=tiled", "vae=taesdxl",
                   "compile=regional", "compile=full", "feature_reuse=2", "feature_reuse=3", "low_vram")
PROFILE_RUNS = 3
MAX_PROMPTS = 512


def parse_option(text: str) -> dict:
    """``"compile=full,feature_reuse=3"`` -> ``{"compile": "full", "feature_reuse": 3}``, every value checked."""
    types = {f.name: f.type for f in fields(GenerateRequest)}
    out = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        name = name.strip()
        if name not in REQUEST_OPTIONS + CACHE_OPTIONS:
            raise ValueError(f"unknown speed option {name!r} in {text!r}; options: "
                             f"{', '.join(REQUEST_OPTIONS + CACHE_OPTIONS)}")
        if not sep:
            value = "true"
        kind = "bool" if name == "low_vram" else types.get(name, "str")
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"option {name} takes true or false; got {value!r}")
            out[name] = value.lower() in ("true", "1")
        elif kind == "int":
            try:
                out[name] = int(value)
            except ValueError:
                raise ValueError(f"option {name} takes an integer; got {value!r}") from None
        else:
            out[name] = value
    if "compile" in out:
        check_choice("compile", out["compile"], COMPILE)
    if "low_vram" in out:
        check_flag("low_vram", out["low_vram"])
    GenerateRequest(prompt="", **{k: v for k, v in out.items() if k in REQUEST_OPTIONS})  # validates the rest
    return out


def option_label(options: dict) -> str:
    if not options:
        return "default"
    return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())


def prompt_pairs(n: int, models: list) -> tuple[list[tuple[str, int]], bool]:
    """(prompt, seed) pairs and whether the demo evaluator can score them: the demo grammar's evaluation set for
    the demo family, the arena's general prompts (cycled, seeds 1000+i) otherwise."""
    if not 1 <= n <= MAX_PROMPTS:
        raise ValueError(f"prompts must be between 1 and {MAX_PROMPTS}; got {n}")
    if all(getattr(m, "name", str(m)).startswith("demo-") for m in models):
        return eval_prompts(n, "train"), True
    general = json.loads((ASSETS_DIR / "prompts" / "arena.json").read_text())["categories"]["general"]
    return [(general[i % len(general)], 1000 + i) for i in range(n)], False


def _not_applicable(cache: ModelCache, spec, options: dict) -> str | None:
    """Why an option cannot run on this model here (None when it can)."""
    if options.get("low_vram") and cache.runtime.device.type != "cuda":
        return "low VRAM (model CPU offload) applies only with a CUDA GPU: on a CPU the weights already live in " \
               "CPU memory"
    if options.get("vae", "default") != "default":
        pipe = cache.get(spec)
        own = pipe.vae.config
        if (own.latent_channels, len(own.block_out_channels)) != (4, 4):
            return (f"{options['vae']} decodes SDXL latents (4 channels, scale factor 8); this model's VAE has "
                    f"{own.latent_channels} latent channels and scale factor {2 ** (len(own.block_out_channels) - 1)}"
                    f" ({sum(p.numel() for p in pipe.vae.decoder.parameters()):,} decoder parameters): no tiny VAE "
                    "exists for it — see the profile for the share of a generation its decode takes")
        try:
            cache.vae(options["vae"], pipe)
        except ValueError as err:
            return str(err)
    return None


def _run(cache: ModelCache, spec, request: GenerateRequest, options: dict):
    cache.set_compile(options.get("compile", "off"))
    cache.set_offload(bool(options.get("low_vram", False)))
    req = replace(request, **{k: v for k, v in options.items() if k in REQUEST_OPTIONS})
    return run_model(cache, spec, req, warmup=False)


def profile_default(cache: ModelCache, spec, request: GenerateRequest, runs: int = PROFILE_RUNS) -> dict:
    """Seconds per generation in the text encoders, UNet, the UNet's deep part (feature reuse's skipped modules,
    branch 0), the VAE decoder and the rest, from forward hooks on ``runs`` default calls (hooks removed after)."""
    cache.set_compile("off")
    cache.set_offload(False)
    pipe = cache.get(spec)
    groups = {"text_encoders": [pipe.text_encoder, pipe.text_encoder_2], "unet": [pipe.unet],
              "unet_deep_part": [m for _, m in skipped_modules(pipe.unet, 0)],
              "vae_decode": [pipe.vae.post_quant_conv, pipe.vae.decoder]}
    spent = {g: 0.0 for g in groups}
    handles, started = [], {}
    sync = torch.cuda.synchronize if cache.runtime.device.type == "cuda" else (lambda: None)

    def timers(group: str):
        def pre(module, args):
            sync()
            started[id(module)] = time.perf_counter()

        def post(module, args, out):
            sync()
            spent[group] += time.perf_counter() - started.pop(id(module))
        return pre, post

    for group, modules in groups.items():
        for module in (m for m in modules if m is not None):
            pre, post = timers(group)
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    total = 0.0
    try:
        for _ in range(runs):
            total += run_model(cache, spec, request, warmup=False).stats.latency_s
    finally:
        for h in handles:
            h.remove()
    per = {g: s / runs for g, s in spent.items()}
    per["total"] = total / runs
    per["other"] = per["total"] - per["text_encoders"] - per["unet"] - per["vae_decode"]
    shares = {g: per[g] / per["total"] for g in ("text_encoders", "unet", "unet_deep_part", "vae_decode", "other")}
    return {"seconds": per, "shares": shares, "runs": runs}


def reuse_bound(deep_share: float, interval: int) -> float:
    """Amdahl: the speed-up feature reuse at ``interval`` could give if its reused steps cost nothing but the
    shallow branch (deep share of a whole generation skipped on interval-1 of every interval steps)."""
    return 1.0 / (1.0 - deep_share * (interval - 1) / interval)


def _quality(images: list, reference: list, prompts: list[str], scored: bool) -> dict:
    ssims = [ssim(a, b) for a, b in zip(images, reference)]
    psnrs = [psnr(a, b) for a, b in zip(images, reference)]
    finite = [p for p in psnrs if math.isfinite(p)]
    diff = max(int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
               for a, b in zip(images, reference))
    out = {"ssim_mean": statistics.fmean(ssims), "ssim_min": min(ssims),
           "psnr_db_mean": statistics.fmean(finite) if finite else None,
           "identical_images": len(psnrs) - len(finite), "max_abs_diff_8bit": diff}
    if scored:
        report = evaluate_batch(images, prompts)
        out["evaluator"] = report["accuracy"]
    return out


def bench_options(cache: ModelCache, models: list, options: list[str] | None = None, *, prompts: int = 96,
                  steps: int | None = None, size: int | None = None, guidance: float | None = None,
                  scheduler: str = "Euler", max_minutes: float | None = None, log=None) -> dict:
    """Every option against the default path on every model, interleaved; see the module docstring. With
    ``max_minutes``, the timed prompts stop after the first one that ends past that budget (counted from the start
    of the timed part; the report says how many of those asked for ran)."""
    if max_minutes is not None and not (math.isfinite(max_minutes) and max_minutes > 0):
        raise ValueError(f"max_minutes must be a positive number; got {max_minutes!r}")
    log = log or (lambda *_: None)
    specs = [m if not isinstance(m, str) else resolve_spec(m) for m in check_models(models)]
    parsed = [(option_label(o), o) for o in (parse_option(t) for t in (options or DEFAULT_OPTIONS))]
    configs = [("default", {})] + [(label, o) for label, o in parsed if label != "default"]
    pairs, scored = prompt_pairs(prompts, specs)
    first = specs[0]
    request = GenerateRequest(prompt=pairs[0][0], seed=pairs[0][1], steps=steps or first.default_steps,
                              guidance=first.default_guidance if guidance is None else guidance,
                              width=size, height=size, scheduler=scheduler)
    skipped, runs, warmups = {}, [], {}
    for spec in specs:
        for label, opts in configs:
            reason = _not_applicable(cache, spec, opts)
            if reason:
                skipped.setdefault(spec.name, {})[label] = reason
                log(f"{spec.name} {label}: skipped ({reason})")
                continue
            start = time.perf_counter()
            try:
                _run(cache, spec, request, opts)
            except ValueError as err:
                skipped.setdefault(spec.name, {})[label] = str(err)
                log(f"{spec.name} {label}: skipped ({err})")
                continue
            warmups[(spec.name, label)] = time.perf_counter() - start
            runs.append((spec, label, opts))
            log(f"{spec.name} {label}: warm-up {warmups[(spec.name, label)]:.1f} s")
    missing = [s.name for s in specs if (s.name, "default") not in warmups]
    if missing:
        raise ValueError(f"bench options: the default path failed on {', '.join(missing)}: "
                         f"{'; '.join(skipped[m]['default'] for m in missing)}")
    before = environment(cache.runtime.device)
    latency = {(s.name, label): [] for s, label, _ in runs}
    images = {(s.name, label): [] for s, label, _ in runs}
    asked, timed_start = len(pairs), time.perf_counter()
    for i, (prompt, seed) in enumerate(pairs):
        if max_minutes is not None and i and time.perf_counter() - timed_start > 60 * max_minutes:
            pairs = pairs[:i]
            log(f"time budget of {max_minutes:g} min spent: {i} of {asked} prompts timed")
            break
        req = replace(request, prompt=prompt, seed=seed)
        for spec, label, opts in rotated(runs, i):
            result = _run(cache, spec, req, opts)
            latency[(spec.name, label)].append(result.stats.latency_s)
            images[(spec.name, label)].append(result.images[0])
        log(f"prompt {i + 1}/{len(pairs)} done; load {environment()['load_average'][0]}")
    after = environment(cache.runtime.device)
    profiles = {s.name: profile_default(cache, s, request) for s in specs}
    cache.set_compile("off")
    cache.set_offload(False)
    texts = [p for p, _ in pairs]
    medians = {key: statistics.median(t) for key, t in latency.items()}
    results = {}
    for spec, label, opts in runs:  # a model's default comes first
        key, own = (spec.name, label), (spec.name, "default")
        lat = summary(latency[key])
        row = {"options": opts, "latency": lat, "warmup_s": warmups[key],
               "speedup": medians[own] / lat["median_s"],
               "speedup_paired": _paired(latency[own], latency[key]),
               "speedup_vs_first_default": medians[(first.name, "default")] / lat["median_s"],
               "quality": _quality(images[key], images[own], texts, scored)}
        if opts.get("compile", "off") != "off":
            row["compile_s"] = warmups[key] - lat["median_s"]
        if "feature_reuse" in opts and opts.get("feature_reuse_branch", 0) == 0:
            row["reuse_bound"] = reuse_bound(profiles[spec.name]["shares"]["unet_deep_part"], opts["feature_reuse"])
        if scored:
            base = (row if key == own else results[own])["quality"]["evaluator"]["all"]
            row["evaluator_drop_points"] = 100 * (base - row["quality"]["evaluator"]["all"])
        results[key] = row
    return {
        "models": [s.name for s in specs], "options": [label for label, _ in configs],
        "request": {k: v for k, v in request.to_dict().items() if k not in ("prompt", "seed")},
        "prompts": len(pairs), "prompts_asked": asked, "prompt_set": "eval_prompts(train)" if scored else "arena general", "scored": scored,
        "device": str(cache.runtime.device), "dtype": str(cache.runtime.dtype).replace("torch.", ""),
        "results": {m: {label: results[(m, label)] for (mm, label) in results if mm == m} for m in
                    [s.name for s in specs]},
        "skipped": skipped, "profile": profiles,
        "environment_before": before, "environment_after": after,
    }


def _paired(default: list[float], option: list[float]) -> dict:
    ratios = [d / o for d, o in zip(default, option)]
    s = summary(ratios)
    return {"median": s["median_s"], "p25": s["p25_s"], "p75": s["p75_s"]}


def format_options(report: dict) -> str:
    lines = [f"speed options, {report['prompts']} prompts ({report['prompt_set']}), {report['request']['steps']} "
             f"steps, {report['dtype']} on {report['device']}, {report['environment_before']['torch_threads']} "
             f"threads, load {report['environment_before']['load_average'][0]} -> "
             f"{report['environment_after']['load_average'][0]}",
             f"{'model':<13} {'option':<32} {'median s':>8} {'speed-up':>8} {'vs 1st':>6} {'SSIM':>6} {'PSNR':>6} "
             f"{'eval all':>8} {'drop pt':>7}  note"]
    for model, rows in report["results"].items():
        for label, r in rows.items():
            q = r["quality"]
            ev = q.get("evaluator", {}).get("all")
            note = []
            if "compile_s" in r:
                note.append(f"compile {r['compile_s']:.1f} s")
            if "reuse_bound" in r:
                note.append(f"bound {r['reuse_bound']:.2f}x")
            if q["identical_images"]:
                note.append(f"{q['identical_images']}/{report['prompts']} identical")
            psnr_text = f"{q['psnr_db_mean']:.1f}" if q["psnr_db_mean"] is not None else "inf"
            ev_text = "" if ev is None else f"{ev:.3f}"
            drop = r.get("evaluator_drop_points")
            drop_text = "" if drop is None else f"{drop:.1f}"
            lines.append(f"{model:<13} {label:<32} {r['latency']['median_s']:>8.3f} {r['speedup']:>8.2f} "
                         f"{r['speedup_vs_first_default']:>6.2f} {q['ssim_mean']:>6.3f} {psnr_text:>6} "
                         f"{ev_text:>8} {drop_text:>7}  {'; '.join(note)}")
    for model, rows in report["skipped"].items():
        for label, reason in rows.items():
            lines.append(f"{model:<13} {label:<32} skipped: {reason}")
    for model, p in report["profile"].items():
        shares = ", ".join(f"{k} {v:.0%}" for k, v in p["shares"].items())
        lines.append(f"profile {model}: {p['seconds']['total']:.3f} s per image = {shares}")
    return "\n".join(lines)
