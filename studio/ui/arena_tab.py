"""Arena tab: blind A/B battles between the models of a pool, and the leaderboard (Bradley-Terry + CIs, Elo, heatmap).

    with gr.Tab("Arena"):
        build_arena_tab(cache)      # pool: $STUDIO_ARENA_POOL ("a,b,c") or the demo family in the registry

Model names never reach the browser before a vote: the battle response holds two anonymous PNGs (random file names,
no metadata, see `studio.arena`), the labels "Model A" / "Model B", the prompt and settings; the battle id stays in
server-side `gr.State`. Votes are stored in ``data_dir()/arena/votes.db``; a battle cache built with
``python -m studio arena-cache --cache-dir <data_dir>/arena/cache ...`` is used when present.
"""
from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import gradio as gr

from studio.arena import (CACHE_INDEX, LABELS, VOTES, Arena, ArenaConfig, ArenaError, PromptItem, draw_prompt,
                          export_votes, load_prompt_set, load_votes)
from studio.arena_cli import make_generate_fn
from studio.loading import ModelCache
from studio.paths import data_dir, models_dir
from studio.ratings import RatingConfig, filter_votes, leaderboard, parse_date, plot_win_rate_heatmap, win_rate_matrix
from studio.registry import list_models

POOL_ENV = "STUDIO_ARENA_POOL"  # comma-separated model names; default: the demo family in the registry
LIVE_ENV = "STUDIO_ARENA_LIVE"  # "0": never generate live, serve every battle from the cache
MAX_LIVE_ENV = "STUDIO_ARENA_MAX_LIVE_S"  # live battles slower than this (mean) fall back to the cache
CACHE_NOTE = "served from the pre-generated battle cache"
ALL = "all"
DEMO_CATEGORY = "shapes"  # the demo family only knows the shapes vocabulary: the default category of its pool
VOTE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "bad": "Both are bad"}  # no emoji: not every
# browser has an emoji font (headless Chromium on Debian shows boxes)
# demo models draw at 64 px: scale battle images up to the box, pixel-sharp, instead of showing a thumbnail
IMAGE_CSS = ("#arena-image-a img, #arena-image-b img {width: 100%; height: 100%; object-fit: contain; "
             "image-rendering: pixelated;}")
LEADERBOARD_COLUMNS = ["rank", "model", "BT rating", "95% CI", "Elo", "votes", "win rate"]


def arena_dir() -> Path:
    path = data_dir() / "arena"
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_pool() -> list[str] | None:
    """``$STUDIO_ARENA_POOL`` as a list of names, or None when unset."""
    names = [n.strip() for n in os.environ.get(POOL_ENV, "").split(",") if n.strip()]
    return names or None


def default_pool() -> list[str]:
    """``$STUDIO_ARENA_POOL``, else the demo models of the registry plus exported models built on them."""
    names = env_pool()
    if names:
        return names
    specs = list_models()
    family = {s.name for s in specs if s.name.startswith("demo-")}
    while new := {s.name for s in specs if s.base in family} - family:  # students of students too
        family |= new
    return [s.name for s in specs if s.name in family]


def pool_settings(pool: list[str]) -> dict:
    """Settings shared by both images of a live battle: one size (a native-size difference would hint at the
    model), the largest default step count and the median default guidance of the pool."""
    specs = [s for s in list_models() if s.name in pool]
    settings = {}
    sizes = {s.default_size for s in specs if s.default_size}
    if sizes:
        settings["width"] = settings["height"] = max(sizes)
    if specs:
        settings["steps"] = max(s.default_steps for s in specs)
        settings["guidance"] = float(statistics.median(s.default_guidance for s in specs))
    return settings


def how_to_add_models(pool: list[str]) -> str:
    found = ", ".join(pool) if pool else "none"
    return (f"The arena needs at least two models in its pool (found: {found}). Add models by exporting a student "
            f"into {models_dir()} (a folder with a `studio_model.json` naming its `base`, e.g. "
            f"`python -m studio prune --recipe vega --teacher assets/demo/teacher "
            f"--out {models_dir()}/demo-vega-pruned`)"
            f", or set `{POOL_ENV}=model-1,model-2` before starting the app.")


class ArenaService:
    """Shared state of the tab: the pool, one `Arena` per (pool, cache) over the same database, the curated prompts.

    Per-visitor state (the open battle) lives in `gr.State`; the core keys rate limits and battle ownership on
    ``gr.Request.session_hash`` (hashed with a salt before it is stored).

    Args:
        cache (`ModelCache`): the app's model cache; live battles generate through it (`make_generate_fn`).
        pool (`list[str]`, *optional*): model names; default ``$STUDIO_ARENA_POOL`` (read here), else the demo
            family of the registry, resolved on every battle so exported models join without a restart.
        db_path, cache_dir (*optional*): default ``data_dir()/arena/votes.db`` and ``data_dir()/arena/cache``.
        settings (`dict`, *optional*): live generation settings; default `pool_settings(pool)`.
        config (`ArenaConfig`, *optional*): rate limits etc.; ``live`` defaults to ``$STUDIO_ARENA_LIVE != "0"``.
    """

    def __init__(self, cache: ModelCache, *, pool: list[str] | None = None, db_path: str | Path | None = None,
                 cache_dir: str | Path | None = None, settings: dict | None = None,
                 config: ArenaConfig | None = None):
        self.fixed_pool, self.settings = pool if pool is not None else env_pool(), settings
        self.db_path = Path(db_path) if db_path else arena_dir() / "votes.db"
        self.cache_dir = Path(cache_dir) if cache_dir else arena_dir() / "cache"
        if config is None:
            max_live = os.environ.get(MAX_LIVE_ENV)
            config = ArenaConfig(live=os.environ.get(LIVE_ENV, "1") != "0",
                                 max_live_seconds=float(max_live) if max_live else None)
        self.config = config
        self.generate_fn = make_generate_fn(cache.get)
        self.prompts = load_prompt_set()
        self._arenas: dict[tuple, tuple[Arena, dict]] = {}
        self._lock = threading.Lock()

    def has_cache(self) -> bool:
        return (self.cache_dir / CACHE_INDEX).is_file()

    def cached_models(self) -> set[str]:
        index = json.loads((self.cache_dir / CACHE_INDEX).read_text(encoding="utf-8"))
        return {m for e in index["entries"] for m in e["images"]}

    def pool(self) -> list[str]:
        return list(self.fixed_pool) if self.fixed_pool is not None else default_pool()

    def arena(self) -> tuple[Arena, dict]:
        """The arena of the current pool and its live settings; raises `ArenaError` explaining how to add models
        when the pool is too small."""
        pool, cache_dir = self.pool(), self.cache_dir if self.has_cache() else None
        if not self.config.live and cache_dir is None:
            raise ArenaError("Live generation is off and there is no battle cache yet; build one with "
                             f"`python -m studio arena-cache --cache-dir {self.cache_dir} --models "
                             f"{' '.join(pool) or 'MODEL-1 MODEL-2'}`.")
        if not self.config.live and self.fixed_pool is None:  # cache only: battle what the cache holds
            cached = self.cached_models()
            pool = [m for m in pool if m in cached] if len(set(pool) & cached) >= 2 else sorted(cached)
        if len(set(pool)) < 2:
            raise ArenaError(how_to_add_models(pool))
        key = (tuple(pool), cache_dir)
        with self._lock:
            if key not in self._arenas:
                settings = self.settings if self.settings is not None else pool_settings(pool)
                self._arenas[key] = (Arena(self.db_path, pool, self.generate_fn, cache_dir=cache_dir,
                                           config=self.config, prompts=self.prompts), settings)
            return self._arenas[key]

    def new_battle(self, prompt: str | None, session_id: str, category: str | None) -> dict:
        arena, settings = self.arena()
        return arena.new_battle(prompt, session_id, settings, category=category)

    def vote(self, battle_id: str, vote: str, session_id: str) -> dict:
        return self.arena()[0].vote(battle_id, vote, session_id)

    def categories(self) -> list[str]:
        return sorted({p.category for p in self.prompts})

    def draw(self, category: str | None) -> PromptItem:
        """A curated prompt; from the battle cache when battles can only come from there."""
        items = self.prompts
        if not self.config.live and self.has_cache():
            items = [PromptItem(e["category"], e["prompt"]) for e in self.arena()[0].cache["entries"]]
        return draw_prompt(items, category=category)

    def votes(self) -> list[dict]:
        return load_votes(self.db_path) if self.db_path.is_file() else []


# ---------------------------------------------------------------------------------------------------------------
# handlers


def _session(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"


def _category(value: str | None) -> str | None:
    return None if value in (None, "", ALL) else value


def _buttons(interactive: bool) -> list:
    return [gr.update(interactive=interactive) for _ in VOTES]


def _battle_info(battle: dict) -> str:
    s = battle["settings"]
    size = f"{s['width']}×{s['height']}" if s.get("width") else "native size"
    details = ", ".join(f"{k} {s[k]}" for k in ("steps", "guidance") if k in s)
    text = (f"**Prompt:** {battle['prompt']}  \n*category {battle['category']} · seed {battle['seed']} · {size}"
            f"{' · ' + details if details else ''}*")
    if battle["source"] == "cache":
        text += f"  \n*Note: this battle was {CACHE_NOTE} (no live generation).*"
    return text


class ArenaHandlers:
    """Event handlers bound to one `ArenaService`; every user error becomes a `gr.Error` toast."""

    def __init__(self, service: ArenaService):
        self.service = service

    def on_draw_prompt(self, category: str) -> str:
        try:
            return self.service.draw(_category(category)).text
        except ArenaError as err:
            raise gr.Error(str(err)) from err

    def on_battle(self, prompt: str, category: str, request: gr.Request):
        """Both anonymous images of a new battle in one response; names stay on the server until the vote."""
        try:
            battle = self.service.new_battle(prompt, _session(request), _category(category))
        except ArenaError as err:
            raise gr.Error(str(err)) from err
        images = [gr.update(value=battle["paths"][label], label=label) for label in LABELS]
        reveal = "Which image fits the prompt better? Vote to reveal the models."
        return (*images, _battle_info(battle), reveal, *_buttons(True), battle["battle_id"])

    def on_vote(self, vote: str, battle_id: str | None, request: gr.Request):
        """Record the one vote of this visitor's battle, reveal both names and disable the vote buttons."""
        if not battle_id:
            raise gr.Error("Start a battle first (“New battle”).")
        try:
            result = self.service.vote(battle_id, vote, _session(request))
        except ArenaError as err:
            raise gr.Error(str(err)) from err
        names = [result[label] for label in LABELS]
        outcome = f"winner **{result['winner']}**" if result["winner"] else "no winner"
        reveal = (f"### {LABELS[0]}: {names[0]} · {LABELS[1]}: {names[1]}\nYou voted *{VOTE_LABELS[vote]}* — "
                  f"{outcome}. Thanks! Start a new battle for the next vote.")
        labels = [gr.update(label=f"{label}: {name}") for label, name in zip(LABELS, names)]
        return (*labels, reveal, *_buttons(False))

    def on_leaderboard(self, category: str, since: str, until: str):
        """Leaderboard rows (BT rating with bootstrap 95% CI, Elo, votes, win rate) and the win-rate heatmap."""
        try:
            votes = filter_votes(self.service.votes(), category=_category(category), since=parse_date(since),
                                 until=parse_date(until, end=True))
            rows = leaderboard(votes, RatingConfig(bootstrap_rounds=100))
        except ValueError as err:  # an ArenaError, or a bad date
            raise gr.Error(str(err)) from err
        table = [[r.rank, r.model, round(r.rating, 1), _ci(r.ci_low, r.ci_high), round(r.elo, 1), r.votes,
                  f"{r.win_rate:.0%}"] for r in rows]
        if not rows:
            return table, None, "No votes match these filters yet."
        models, matrix = win_rate_matrix(votes, [r.model for r in rows])
        summary = (f"{len(votes)} votes · ratings: Bradley-Terry MLE (mean 1000), 95% CI from 100 bootstrap rounds; "
                   "Elo: online, K = 4, in vote order. Heatmap: share of decisive votes won (ties and both-bad "
                   "left out).")
        return table, plot_win_rate_heatmap(models, matrix, title="Win rate, row vs column"), summary

    def on_export(self, fmt: str) -> str:
        """All votes as CSV or JSON (model names, sides, vote, prompt, settings, hashed session)."""
        if not self.service.db_path.is_file():
            raise gr.Error("No votes yet.")
        out = arena_dir() / "exports" / f"arena-votes-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            export_votes(self.service.db_path, out, fmt)
        except ValueError as err:
            raise gr.Error(str(err)) from err
        return str(out)


def _ci(low: float, high: float) -> str:
    return "n/a" if low != low or high != high else f"{low:.0f} – {high:.0f}"  # NaN: no bootstrap


def _vote_button_fn(handlers: ArenaHandlers, vote: str):
    def on_vote_button(battle_id: str | None, request: gr.Request):
        return handlers.on_vote(vote, battle_id, request)

    return on_vote_button


# ---------------------------------------------------------------------------------------------------------------
# layout


def build_arena_tab(cache: ModelCache, *, pool: list[str] | None = None, db_path: str | Path | None = None,
                    cache_dir: str | Path | None = None, settings: dict | None = None,
                    config: ArenaConfig | None = None) -> ArenaService:
    """Battle and Leaderboard sub-tabs; see `ArenaService` for the options. Returns the service (for tests)."""
    service = ArenaService(cache, pool=pool, db_path=db_path, cache_dir=cache_dir, settings=settings, config=config)
    handlers = ArenaHandlers(service)
    categories = [ALL, *service.categories()]
    default_category = DEMO_CATEGORY if service.fixed_pool is None and DEMO_CATEGORY in categories else ALL
    with gr.Tab("Battle"):
        gr.Markdown("**Blind arena** — two anonymous models draw the same prompt with the same seed. Vote for the "
                    "better image; the names are revealed after your vote (one vote per battle).")
        current = service.pool()
        if len(set(current)) < 2:
            gr.Markdown(f"**Note:** {how_to_add_models(current)}")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt (empty = a curated prompt)", lines=1, scale=4,
                                elem_id="arena-prompt")
            category = gr.Dropdown(categories, value=default_category, label="Category", scale=1, elem_id="arena-category")
            draw = gr.Button("Draw a prompt", scale=0, elem_id="arena-draw")
        battle_btn = gr.Button("New battle", variant="primary", elem_id="arena-new-battle")
        info = gr.Markdown(elem_id="arena-info")
        with gr.Row():
            images = [gr.Image(label=label, type="filepath", format="png", interactive=False, height=320,
                               elem_id=f"arena-image-{side}") for label, side in zip(LABELS, "ab")]
        with gr.Row():
            vote_btns = {v: gr.Button(VOTE_LABELS[v], interactive=False, elem_id=f"arena-vote-{v}") for v in VOTES}
        reveal = gr.Markdown(elem_id="arena-reveal")
        battle_id = gr.State(None)  # server side: never sent to the browser
        vote_choice = gr.Radio(list(VOTES), value="A", visible=False, label="vote")  # API input of arena_vote
        vote_api = gr.Button(visible=False)
        gr.HTML(f"<style>{IMAGE_CSS}</style>", padding=False, container=False)  # last: its empty block adds a gap
    with gr.Tab("Leaderboard") as board_tab:
        with gr.Row():
            board_category = gr.Dropdown([*categories, "custom"], value=ALL, label="Category")
            since = gr.Textbox(label="From (YYYY-MM-DD)", placeholder="any")
            until = gr.Textbox(label="To, inclusive (YYYY-MM-DD)", placeholder="any")
            refresh = gr.Button("Refresh", elem_id="arena-refresh")
        summary = gr.Markdown(elem_id="arena-summary")
        table = gr.Dataframe(headers=LEADERBOARD_COLUMNS, interactive=False, label="Leaderboard",
                             elem_id="arena-leaderboard")
        heatmap = gr.Plot(label="Pairwise win rate", elem_id="arena-heatmap")
        with gr.Row():
            fmt = gr.Radio(["csv", "json"], value="csv", label="Export format")
            export = gr.Button("Export votes", elem_id="arena-export")
            export_file = gr.File(label="Votes export", interactive=False, height=120)

    draw.click(handlers.on_draw_prompt, category, prompt, api_name="arena_draw_prompt")
    battle_btn.click(handlers.on_battle, [prompt, category], [*images, info, reveal, *vote_btns.values(), battle_id],
                     api_name="arena_battle", concurrency_id="gpu", concurrency_limit=1)
    vote_outputs = [*images, reveal, *vote_btns.values()]
    vote_api.click(handlers.on_vote, [vote_choice, battle_id], vote_outputs, api_name="arena_vote")
    for vote, button in vote_btns.items():
        button.click(_vote_button_fn(handlers, vote), battle_id, vote_outputs, api_visibility="private")
    board_inputs, board_outputs = [board_category, since, until], [table, heatmap, summary]
    refresh.click(handlers.on_leaderboard, board_inputs, board_outputs, api_name="arena_leaderboard")
    board_tab.select(handlers.on_leaderboard, board_inputs, board_outputs, api_visibility="private")
    export.click(handlers.on_export, fmt, export_file, api_name="arena_export")
    return service
