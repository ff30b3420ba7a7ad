"""Arena subcommands of the studio CLI: ``arena-cache``, ``arena-export``, ``leaderboard`` and ``arena-timing``.

    register(subparsers, generate_fn_factory=make_generate_fn)   # from studio/__main__.py; then args.func(args)

`arena-cache` gets its images from a factory ``generate_fn_factory(args) -> GenerateFn`` (``args`` is the parsed
namespace: ``args.models``, ``args.settings``, plus any option a caller adds to the returned parser); the default
wraps the studio generation layer with `make_generate_fn`. Every handler returns an exit code.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from studio.arena import MAX_SEED, Arena, ArenaConfig
from studio.arena_cache import DEFAULT_PROMPT_SET, GenerateFn, build_cache, load_prompt_set
from studio.arena_votes import VOTER_POLICIES, export_votes, load_votes
from studio.ratings import LeaderboardRow, RatingConfig, leaderboard, parse_date

GenerateFnFactory = Callable[[argparse.Namespace], GenerateFn]
SETTING_KEYS = ("negative_prompt", "steps", "guidance", "width", "height", "scheduler")  # GenerateRequest fields


NOT_IN_BATTLES = ("{names}: conditional model(s) need a condition image, and an arena battle is a text-to-image "
                  "prompt with none to give; the arena pits text-to-image models only")


def make_generate_fn(get_pipe: Callable[[str], object] | None = None) -> GenerateFn:
    """The arena's ``generate_fn(model, prompt, seed, settings)`` on top of `studio.generation.generate`.

    Args:
        get_pipe (`Callable[[str], StableDiffusionXLPipeline]`, *optional*): model name -> loaded pipeline;
            default a `studio.loading.ModelCache`. `settings` may hold the keys `SETTING_KEYS`.
    """
    from studio.generation import GenerateRequest, card_request, generate
    from studio.resolve import resolve_spec

    if get_pipe is None:
        from studio.loading import ModelCache

        get_pipe = ModelCache().get

    def generate_fn(model: str, prompt: str, seed: int, settings: dict):
        unknown = sorted(set(settings) - set(SETTING_KEYS))
        if unknown:
            raise ValueError(f"arena settings: unknown keys {unknown}; allowed: {', '.join(SETTING_KEYS)}")
        request = GenerateRequest(prompt=prompt, seed=seed, batch_size=1, **settings)
        try:
            spec = resolve_spec(model)
        except ValueError:  # a model ``get_pipe`` knows that the registry does not: no card to follow
            spec = None
        if spec is not None and spec.conditional:
            raise ValueError(NOT_IN_BATTLES.format(names=model))
        if spec is not None:
            request = card_request(spec, request)  # a few-step model runs as its card says
        return generate(get_pipe(model), request, model_name=model).images[0]

    return generate_fn


def default_generate_fn_factory(args: argparse.Namespace) -> GenerateFn:
    """`make_generate_fn` with the studio's model cache (loads ``args.models`` on first use)."""
    return make_generate_fn()


def format_leaderboard(rows: Sequence[LeaderboardRow], min_votes: int = RatingConfig().min_votes) -> str:
    """A plain-text table of leaderboard rows (a provisional rating, below ``min_votes`` votes, is marked)."""
    header = (f"{'rank':>4}  {'model':<24} {'rating':>7} {'95% CI':>16} {'elo':>7} {'votes':>6} {'win rate':>8}  "
              "note")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.rank:>4}  {r.model:<24} {r.rating_text:>7} {r.ci_text:>16} {r.elo:>7.1f} {r.votes:>6} "
                     f"{r.win_rate:>8.1%}  {r.note(min_votes)}".rstrip())
    return "\n".join(lines)


def _date_arg(*, end: bool) -> Callable[[str], float | None]:
    """``parse_date`` as an argparse type (its message as the usage error)."""
    def parse(text: str) -> float | None:
        try:
            return parse_date(text, end=end)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


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


def run_timing(args: argparse.Namespace, generate_fn_factory: GenerateFnFactory) -> int:
    """Benchmark: live battles of ``args.models`` with and without pacing, in one run; prints each pair's mean
    latency and the spread between pairs (what a voter timing the response could read)."""
    import statistics
    import tempfile

    generate_fn = generate_fn_factory(args)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pace in (False, True):
            arena = Arena(Path(tmp) / f"timing-{pace}.db", args.models, generate_fn, prompts=load_prompt_set(),
                          config=ArenaConfig(votes_per_minute=None, battles_per_minute=None, pace_live=pace,
                                             save_images=False))
            arena.new_battle(args.prompt, "bench", args.settings, seed=0)  # loads and calibrates every model
            for i in range(args.battles):
                start = time.perf_counter()
                battle = arena.new_battle(args.prompt, "bench", args.settings, seed=i + 1)
                elapsed = time.perf_counter() - start
                reveal = arena.vote(battle["battle_id"], "tie", "bench")
                pair = " vs ".join(sorted((reveal["Model A"], reveal["Model B"])))
                rows.setdefault(pair, {}).setdefault(pace, []).append(elapsed)
    print(f"{'pair':<36} {'unpaced s':>10} {'paced s':>8}")
    means = {pace: [] for pace in (False, True)}
    for pair, by_pace in sorted(rows.items()):
        cells = []
        for pace in (False, True):
            m = statistics.mean(by_pace[pace]) if by_pace.get(pace) else float("nan")
            means[pace].append(m)
            cells.append(m)
        print(f"{pair:<36} {cells[0]:>10.3f} {cells[1]:>8.3f}")
    spreads = {pace: max(v) - min(v) for pace, v in means.items() if v}
    print(f"spread between pairs: unpaced {spreads[False]:.3f} s, paced {spreads[True]:.3f} s "
          f"({args.battles} battles each, settings {json.dumps(args.settings, sort_keys=True)})")
    return 0


def run_leaderboard(args: argparse.Namespace) -> int:
    """Print the Bradley-Terry leaderboard of ``args.db``."""
    config = RatingConfig(k=args.k, bootstrap_rounds=args.rounds, seed=args.seed, min_votes=args.min_votes)
    rows = leaderboard(load_votes(args.db), config, category=args.category, since=args.since, until=args.until)
    print(format_leaderboard(rows, config.min_votes) if rows else "leaderboard: no votes match")
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
    board.add_argument("--since", type=_date_arg(end=False), default=None, help="only votes at or after this ISO date")
    board.add_argument("--until", type=_date_arg(end=True), default=None,
                       help="only votes before this ISO date-time (a date alone: up to the end of that day)")
    board.add_argument("--rounds", type=int, default=100, help="bootstrap rounds for the 95%% CIs")
    board.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    board.add_argument("--k", type=float, default=4.0, help="online Elo K")
    board.add_argument("--min-votes", type=int, default=RatingConfig().min_votes,
                       help="a model's rating is marked provisional below this many votes (default %(default)s)")
    board.set_defaults(func=run_leaderboard)
    timing = subparsers.add_parser("arena-timing", help="benchmark: battle latency per pair, paced vs unpaced")
    timing.add_argument("--models", nargs="+", default=["demo-teacher", "demo-ssd", "demo-vega"],
                        help="pool (default: the demo family)")
    timing.add_argument("--battles", type=int, default=12, help="battles per mode (default 12)")
    timing.add_argument("--prompt", default="a red circle on a blue background", help="prompt of every battle")
    timing.add_argument("--settings", type=_settings, default={"steps": 20, "width": 64, "height": 64},
                        help="generation settings as a JSON object")
    timing.set_defaults(func=lambda args: run_timing(args, generate_fn_factory or default_generate_fn_factory))
    return {"arena-cache": cache, "arena-export": export, "leaderboard": board, "arena-timing": timing}
