"""Arena subcommands of the studio CLI: ``arena-cache``, ``arena-export`` and ``leaderboard``.

    register(subparsers, generate_fn_factory=make_generate_fn)   # from studio/__main__.py; then args.func(args)

`arena-cache` gets its images from a factory ``generate_fn_factory(args) -> GenerateFn`` (``args`` is the parsed
namespace: ``args.models``, ``args.settings``, plus any option a caller adds to the returned parser); the default
wraps the studio generation layer with `make_generate_fn`. Every handler returns an exit code.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

from studio.arena import (DEFAULT_PROMPT_SET, MAX_SEED, VOTER_POLICIES, GenerateFn, build_cache, export_votes,
                          load_prompt_set, load_votes)
from studio.ratings import LeaderboardRow, RatingConfig, leaderboard

GenerateFnFactory = Callable[[argparse.Namespace], GenerateFn]
SETTING_KEYS = ("negative_prompt", "steps", "guidance", "width", "height", "scheduler")  # GenerateRequest fields


def make_generate_fn(get_pipe: Callable[[str], object] | None = None) -> GenerateFn:
    """The arena's ``generate_fn(model, prompt, seed, settings)`` on top of `studio.generation.generate`.

    Args:
        get_pipe (`Callable[[str], StableDiffusionXLPipeline]`, *optional*): model name -> loaded pipeline;
            default a `studio.loading.ModelCache`. `settings` may hold the keys `SETTING_KEYS`.
    """
    from studio.generation import GenerateRequest, generate

    if get_pipe is None:
        from studio.loading import ModelCache

        get_pipe = ModelCache().get

    def generate_fn(model: str, prompt: str, seed: int, settings: dict):
        unknown = sorted(set(settings) - set(SETTING_KEYS))
        if unknown:
            raise ValueError(f"arena settings: unknown keys {unknown}; allowed: {', '.join(SETTING_KEYS)}")
        request = GenerateRequest(prompt=prompt, seed=seed, batch_size=1, **settings)
        return generate(get_pipe(model), request, model_name=model).images[0]

    return generate_fn


def default_generate_fn_factory(args: argparse.Namespace) -> GenerateFn:
    """`make_generate_fn` with the studio's model cache (loads ``args.models`` on first use)."""
    return make_generate_fn()


def format_leaderboard(rows: Sequence[LeaderboardRow]) -> str:
    """A plain-text table of leaderboard rows."""
    header = f"{'rank':>4}  {'model':<24} {'rating':>7} {'95% CI':>15} {'elo':>7} {'votes':>6} {'win rate':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        ci = "n/a" if math.isnan(r.ci_low) else f"{r.ci_low:.0f}..{r.ci_high:.0f}"
        lines.append(f"{r.rank:>4}  {r.model:<24} {r.rating:>7.1f} {ci:>15} {r.elo:>7.1f} {r.votes:>6} "
                     f"{r.win_rate:>8.1%}")
    return "\n".join(lines)


def _date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date such as 2026-11-27 or 2026-11-27T14:00, got {text!r}")


def _settings(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--settings must be a JSON object: {exc}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--settings must be a JSON object, got {text!r}")
    return value


def run_cache(args: argparse.Namespace, generate_fn_factory: GenerateFnFactory) -> int:
    """Build a battle cache for ``args.models`` over the curated prompts and ``args.seeds``."""
    prompts = [p for p in load_prompt_set(args.prompt_set) if args.category is None or p.category == args.category]
    if args.max_prompts is not None:
        prompts = prompts[:args.max_prompts]
    if not prompts:
        print(f"arena-cache: no prompts of category {args.category!r} in {args.prompt_set}", file=sys.stderr)
        return 2

    def progress(done: int, total: int) -> None:
        print(f"\rarena-cache: {done}/{total} images", end="\n" if done == total else "", flush=True)

    seeds = args.seeds or [random.SystemRandom().randrange(MAX_SEED + 1) for _ in range(args.num_seeds)]
    index = build_cache(args.models, prompts, seeds, generate_fn_factory(args), args.cache_dir,
                        settings=args.settings, on_progress=progress)
    print(f"arena-cache: index written to {index}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write every vote of ``args.db`` to ``args.out`` (CSV or JSON; voter pseudonyms per ``args.voters``)."""
    n = export_votes(args.db, args.out, args.format, voters=args.voters)
    print(f"arena-export: {n} votes written to {args.out} (voters: {args.voters})")
    return 0


def run_leaderboard(args: argparse.Namespace) -> int:
    """Print the Bradley-Terry leaderboard of ``args.db``."""
    config = RatingConfig(k=args.k, bootstrap_rounds=args.rounds, seed=args.seed)
    rows = leaderboard(load_votes(args.db), config, category=args.category, since=args.since, until=args.until)
    print(format_leaderboard(rows) if rows else "leaderboard: no votes match")
    return 0


def register(subparsers: argparse._SubParsersAction, *, generate_fn_factory: GenerateFnFactory | None = None
             ) -> dict[str, argparse.ArgumentParser]:
    """Add ``arena-cache``, ``arena-export`` and ``leaderboard`` to `subparsers`; each sets ``args.func(args)``.

    `generate_fn_factory` defaults to `default_generate_fn_factory`. Returns the three parsers by name so the
    main CLI can add its own options (device, dtype, ...).
    """
    cache = subparsers.add_parser("arena-cache", help="pre-generate arena battles for CPU hosting")
    cache.add_argument("--cache-dir", required=True, help="output folder (index.json + PNGs); resumable")
    cache.add_argument("--models", nargs="+", required=True, help="model names of the pool")
    cache.add_argument("--seeds", nargs="+", type=int, default=None,
                       help="seeds per prompt (default: --num-seeds random ones: a small known seed would let a "
                            "voter replay a battle before voting)")
    cache.add_argument("--num-seeds", type=int, default=1, help="random seeds per prompt when --seeds is not given")
    cache.add_argument("--prompt-set", default=str(DEFAULT_PROMPT_SET), help="prompt set JSON")
    cache.add_argument("--category", default=None, help="only prompts of this category")
    cache.add_argument("--max-prompts", type=int, default=None, help="only the first N prompts")
    cache.add_argument("--settings", type=_settings, default={}, help="generation settings as a JSON object")
    cache.set_defaults(func=lambda args: run_cache(args, generate_fn_factory or default_generate_fn_factory))

    export = subparsers.add_parser("arena-export", help="export arena votes as CSV or JSON")
    export.add_argument("--db", required=True, help="arena SQLite database")
    export.add_argument("--out", required=True, help="output file (.csv or .json)")
    export.add_argument("--format", choices=("csv", "json"), default=None, help="default: from --out's extension")
    export.add_argument("--voters", choices=VOTER_POLICIES, default="rotate",
                        help="voter pseudonyms: keep the stored ones, rotate (fresh ones, unlinkable to other exports; "
                             "default) or drop them")
    export.set_defaults(func=run_export)

    board = subparsers.add_parser("leaderboard", help="print the arena leaderboard (Bradley-Terry + Elo)")
    board.add_argument("--db", required=True, help="arena SQLite database")
    board.add_argument("--category", default=None, help="only votes of this prompt category")
    board.add_argument("--since", type=_date, default=None, help="only votes at or after this ISO date")
    board.add_argument("--until", type=_date, default=None, help="only votes before this ISO date")
    board.add_argument("--rounds", type=int, default=100, help="bootstrap rounds for the 95%% CIs")
    board.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    board.add_argument("--k", type=float, default=4.0, help="online Elo K")
    board.set_defaults(func=run_leaderboard)
    return {"arena-cache": cache, "arena-export": export, "leaderboard": board}
