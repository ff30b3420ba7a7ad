"""Command line: ``python -m studio generate|models|bench|smoke|...``. Same config objects as the UI.

    python -m studio models
    python -m studio generate --model demo-teacher --prompt "a red circle on a blue background" --out outputs/cli
    python -m studio generate --model /data/my-unet --base sdxl --prompt "a lighthouse"
    python -m studio smoke --model vega --dtype bf16 --size 256
    python -m studio generate --prompt "a red star on a green background" --feature-reuse 3 --compile regional
    python -m studio bench unet --resolution 256 --threads 2        # and bench memory|side-by-side|options
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from studio.generation import GenerateRequest
from studio.schedulers import SCHEDULERS
from studio.speed import COMPILE

REQUEST_HELP = {
    "prompt": "what to draw", "negative_prompt": "what to avoid", "seed": "-1 = random (reported)",
    "steps": "denoising steps (1-150)", "guidance": "CFG scale (0-30)",
    "width": "pixels, multiple of 8 (default: the model's native size)", "height": "pixels, multiple of 8",
    "scheduler": "one of: " + ", ".join(SCHEDULERS), "batch_size": "images per model (1-8)",
    "strength": "image-to-image strength (0, 1]",
    "vae": "default (the model's own), fp16-fix (madebyollin/sdxl-vae-fp16-fix: decodes in fp16 on a GPU) or "
           "taesdxl (madebyollin/taesdxl: tiny preview decoder, SDXL-class models)",
    "attention": "sdpa (default: PyTorch's fused attention) or classic", "channels_last": "NHWC convolution weights",
    "fuse_qkv": "one projection for Q, K and V (not with --lora)",
    "vae_decode": "auto (sliced for batches, tiled when large), full, sliced or tiled",
    "feature_reuse": "DeepCache-style: recompute the deep UNet features every N steps, reuse them between (1 = off)",
    "feature_reuse_branch": "skip branch recomputed on reused steps (0 = shallowest, fastest)",
}
MODEL_HELP = ("registry name, local folder/.safetensors, or hub id owner/name (tried in that order); repeat for "
              "side by side")
BASE_HELP = ("model supplying the text encoders and VAE of UNet-only paths/hub ids among --model (default: the "
             "folder's studio_model.json, else the registry model whose text encoders fit the UNet's config)")


def _add_request_args(parser: argparse.ArgumentParser, *, prompt: str | None = None) -> None:
    """One flag per GenerateRequest field, named after it (--negative-prompt -> negative_prompt)."""
    defaults = GenerateRequest(prompt="")
    for f in fields(GenerateRequest):
        if f.name == "init_image":
            parser.add_argument("--init-image", help="image-to-image: path of the starting image")
            continue
        default = getattr(defaults, f.name)
        kind = {"seed": int, "steps": int, "batch_size": int, "width": int, "height": int, "feature_reuse": int,
                "feature_reuse_branch": int, "guidance": float, "strength": float}.get(f.name, str)
        if f.name == "prompt":
            parser.add_argument("--prompt", default=prompt, required=prompt is None, help=REQUEST_HELP["prompt"])
            continue
        if isinstance(default, bool):
            parser.add_argument("--" + f.name.replace("_", "-"), action="store_true", help=REQUEST_HELP.get(f.name))
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default, help=REQUEST_HELP.get(f.name))


def parse_lora_args(items: list[str], models: list[str]) -> dict:
    """``path:scale`` applies to every model; ``model=path:scale`` to that model only."""
    from studio.lora import LoraRef

    out: dict[str, list] = {m: [] for m in models}
    for item in items:
        model, sep, ref = item.partition("=")
        targets = [model] if sep else models
        if sep and model not in out:
            raise ValueError(f"--lora {item!r} names model {model!r}, which is not among --model {models}")
        for m in targets:
            out[m].append(LoraRef.parse(ref if sep else item))
    return out


def _specs(args) -> list:
    """--model arguments resolved (registry name -> local path -> hub id), --base applied to UNet-only ones."""
    from studio.loading import resolve_spec
    from studio.registry import default_model

    return [resolve_spec(m, base=args.base, hub_ids=True) for m in (args.model or [default_model()])]


def _cache(args):
    from studio.loading import ModelCache

    return ModelCache(offload=args.low_vram, compile=args.compile)


def cmd_generate(args) -> int:
    from PIL import Image
    from tqdm import tqdm

    from studio.compare import STATS_CAPTION, STATS_COLUMNS, iter_side_by_side, stats_rows

    values = {f.name: getattr(args, f.name) for f in fields(GenerateRequest) if f.name != "init_image"}
    if args.init_image:
        values["init_image"] = Image.open(args.init_image)
    request = GenerateRequest(**values)
    specs = _specs(args)
    loras = parse_lora_args(args.lora or [], [str(m) for m in (args.model or [specs[0].name])])
    loras = {spec.name: refs for spec, refs in zip(specs, loras.values())}
    results = []
    bar = tqdm(total=0, unit="step")

    def on_step(step, total, info):
        if step == 1:  # a new model (or its warm-up) starts: restart the bar (and its rate) for it
            bar.reset(total=total)
            bar.set_description(f"{info['model']} {info.get('phase', '')}".strip())
        bar.update(step - bar.n)

    for result in iter_side_by_side(_cache(args), specs, request, loras=loras, on_step=on_step):
        if result.error:
            print(f"error: {result.model}: {result.error}", file=sys.stderr)
        for path in result.save(args.out):
            print(path)
        results.append(result)
    bar.close()
    print(json.dumps([dict(zip(STATS_COLUMNS, row)) for row in stats_rows(results)], indent=2))
    print(STATS_CAPTION, file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


def cmd_models(args) -> int:
    from studio.registry import model_rows

    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<16} {'offline':<8} {'UNet params':>14}  source")
    for r in rows:
        params = f"{r['unet_params']:,}" if r["unet_params"] else "?"
        print(f"{r['name']:<16} {'yes' if r['offline'] else 'no':<8} {params:>14}  {r['source']}"
              + (f"  (components from {r['base']})" if r["base"] else ""))
    return 0


def cmd_bench(args) -> int:
    from studio.bench import BENCH_COLUMNS, bench_generate

    values = {f.name: getattr(args, f.name) for f in fields(GenerateRequest) if f.name != "init_image"}
    rows = bench_generate(_cache(args), _specs(args), GenerateRequest(**values), repeats=args.repeats,
                          warmup=args.warmup)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(" | ".join(BENCH_COLUMNS))
        for row in rows:
            print(" | ".join(str(row[c]) for c in BENCH_COLUMNS))
    return 0


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", help=MODEL_HELP + " (default: the registry default, the demo "
                                                                      "teacher)")
    parser.add_argument("--base", help=BASE_HELP)
    parser.add_argument("--low-vram", action="store_true",
                        help="keep weights in CPU memory and move one component at a time to the GPU "
                             "(diffusers model CPU offload): slower, fits smaller GPUs")
    parser.add_argument("--compile", choices=COMPILE, default="off",
                        help="torch.compile the UNet: regional (its transformer layers, short compile) or full; "
                             "the first call compiles (see python -m studio bench options)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio",
                                     description="SDXL-family studio: generate, compare, take UNets apart.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate with one or more models side by side")
    _add_model_args(gen)
    _add_request_args(gen)
    gen.add_argument("--lora", action="append", metavar="[MODEL=]PATH[:SCALE]",
                     help="LoRA .safetensors (diffusers or kohya format) with optional scale; repeatable; "
                          "MODEL= limits it to one of the --model entries")
    gen.add_argument("--out", default="outputs/cli", help="folder for PNGs (with A1111 'parameters' metadata)")
    gen.set_defaults(func=cmd_generate)
    bench = sub.add_parser("bench", help="time models side by side (median of repeats, ratio to the first)")
    _add_model_args(bench)
    _add_request_args(bench, prompt="a red circle on a blue background")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)
    from studio.bench.cli import register as register_bench

    register_bench(bench.add_subparsers(dest="bench_command", metavar="{unet,memory,side-by-side,options}"))
    models = sub.add_parser("models", help="list the model registry")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    for module in _extension_modules():
        module.register(sub)
    return parser


def _extension_modules():
    """Subcommands contributed by other core modules (layer removal, arena), when present."""
    import importlib

    for name in ("studio.smoke", "studio.removal_cli", "studio.arena_cli", "studio.ablation_cli"):
        try:
            yield importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # reports record the command that made them
    try:
        return args.func(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
