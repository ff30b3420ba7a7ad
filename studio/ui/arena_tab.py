"""Arena tab: blind A/B battles between the models of a pool, and the leaderboard (Bradley-Terry + CIs, Elo, heatmap).

    with gr.Tab("Arena"):
        build_arena_tab(cache, hosting=hosting)

The pool: an admin's choice (stored in the votes database, set in the tab or with /arena_set_pool), else
``$STUDIO_ARENA_POOL`` ("a,b,c"), else the demo family — in local mode with the students exported from it, resolved
on every battle; in public mode only the built-in demo models: nothing joins a public pool by itself.

Nothing identifies a model before the vote: the battle response holds two anonymous images (no metadata, handed to
Gradio's cache as images, never as files of the data folder), the labels "Model A" / "Model B" and the prompt — no
seed, no settings; the battle id stays in server-side `gr.State`. Rate limits, the daily vote cap, battle ownership
and the minimum viewing time count the visitor's server-side identity (`studio.ui.access.visitor`). Votes live in
``<persistent dir>/arena/votes.db`` (``/data`` on a Space with persistent storage); a battle cache built with
``python -m studio arena-cache --cache-dir <data dir>/arena/cache ...`` is used when present.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

from studio import hosting as hosting_mod
from studio.arena import (CACHE_INDEX, LABELS, VOTES, Arena, ArenaConfig, ArenaError, PromptItem, VoteMirror,
                          draw_prompt, export_votes, load_prompt_set, load_votes, read_setting, restore_votes,
                          write_setting)
from studio.arena_cli import SETTING_KEYS, make_generate_fn
from studio.hosting import Hosting, deliverable, display_path, gpu_task
from studio.loading import ModelCache
from studio.paths import DEMO_DIR, data_dir, model_roots, models_dir
from studio.ratings import RatingConfig, filter_votes, leaderboard, parse_date, plot_win_rate_heatmap, win_rate_matrix
from studio.registry import list_models
import studio.ui.access as access

POOL_ENV = "STUDIO_ARENA_POOL"  # comma-separated model names; default: the demo family in the registry
DATASET_ENV = hosting_mod.VOTES_DATASET_ENV  # "user/name": mirror votes to this Hub dataset (CommitScheduler)
MIRROR_MINUTES = 5
LIVE_ENV = "STUDIO_ARENA_LIVE"  # "0": never generate live, serve every battle from the cache
MAX_LIVE_ENV = "STUDIO_ARENA_MAX_LIVE_S"  # live battles slower than this (mean) fall back to the cache
SETTINGS_ENV = "STUDIO_ARENA_SETTINGS"  # JSON object, e.g. {"steps": 8}: overrides `pool_settings` of live battles
CACHE_NOTE = "served from the pre-generated battle cache"
ALL = "all"
LOG = logging.getLogger(__name__)
DEMO_CATEGORY = "shapes"  # the demo family only knows the shapes vocabulary: the default category of its pool
VOTE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "bad": "Both are bad"}  # no emoji: not every
# browser has an emoji font (headless Chromium on Debian shows boxes)
# demo models draw at 64 px: scale battle images up to the box, pixel-sharp, instead of showing a thumbnail
IMAGE_CSS = ("#arena-image-a img, #arena-image-b img {width: 100%; height: 100%; object-fit: contain; "
             "image-rendering: pixelated;}")
LEADERBOARD_COLUMNS = ["rank", "model", "BT rating", "95% CI", "Elo", "votes", "win rate"]


def arena_dir() -> Path:
    """Votes database and mirror shards: ``<persistent dir>/arena`` (blocked from serving, never in allowed_paths)."""
    path = hosting_mod.persistent_dir() / "arena"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_root() -> Path:
    """Where the battle cache is looked for: ``<data dir>/arena/cache`` (the cache is rebuilt, not persisted)."""
    return data_dir() / "arena" / "cache"


def env_pool() -> list[str] | None:
    """``$STUDIO_ARENA_POOL`` as a list of names, or None when unset."""
    names = [n.strip() for n in os.environ.get(POOL_ENV, "").split(",") if n.strip()]
    return names or None


def default_pool(*, public: bool = False) -> list[str]:
    """``$STUDIO_ARENA_POOL``, else the built-in demo models; in local mode also the students exported from them
    (a public pool never grows by itself: a finished job's model joins only when an admin adds it)."""
    names = env_pool()
    if names:
        return names
    specs = list_models()
    family = {s.name for s in specs if s.name.startswith("demo-")
              and Path(s.source).resolve().is_relative_to(DEMO_DIR.resolve())}
    while not public and (new := {s.name for s in specs if s.base in family} - family):  # students of students
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


def env_settings(caps) -> dict:
    """``$STUDIO_ARENA_SETTINGS`` (keys of `SETTING_KEYS`, steps and size within the caps), or {} when unset."""
    text = os.environ.get(SETTINGS_ENV, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{SETTINGS_ENV} must be a JSON object: {exc}") from None
    if not isinstance(value, dict) or set(value) - set(SETTING_KEYS):
        raise ValueError(f"{SETTINGS_ENV} must be a JSON object with keys among {', '.join(SETTING_KEYS)}; "
                         f"got {text[:200]!r}")
    for key, cap in (("steps", "steps"), ("width", "size"), ("height", "size")):
        if key in value:
            if not isinstance(value[key], int) or isinstance(value[key], bool) or value[key] < 1:
                raise ValueError(f"{SETTINGS_ENV}: {key} must be a positive integer; got {value[key]!r}")
            caps.check(cap, value[key], f"{SETTINGS_ENV} {key}")
    return value


def how_to_add_models(pool: list[str]) -> str:
    found = ", ".join(pool) if pool else "none"
    models = display_path(models_dir())
    return (f"The arena needs at least two models in its pool (found: {found}). Add models by exporting a student "
            f"into {models} (a folder with a `studio_model.json` naming its `base`, e.g. "
            f"`python -m studio prune --recipe vega --teacher assets/demo/teacher --out {models}/demo-vega-pruned`)"
            f", or set `{POOL_ENV}=model-1,model-2` before starting the app (an admin can also set the pool here).")


def persistence_note() -> str:
    """Where votes live and whether they survive a restart (shown in the Arena tab)."""
    if hosting_mod.storage_is_persistent():
        return ""
    mirror = os.environ.get(DATASET_ENV)
    if mirror:
        return (f"*Votes are mirrored to the dataset `{mirror}` every {MIRROR_MINUTES} minutes and restored from "
                "it at start-up: this Space has no persistent storage, so the latest minutes can be lost.*")
    return ("**Votes are not persistent**: this Space has no persistent storage, so its votes are lost when it "
            f"restarts. Its owner can add persistent storage (`/data`) or set `{DATASET_ENV}=user/name`.")


def start_mirror(db_path: Path) -> VoteMirror | None:
    """With ``$STUDIO_VOTES_DATASET``: restore the dataset's vote shards into the database, then mirror every new
    vote to a shard that ``huggingface_hub.CommitScheduler`` pushes every `MIRROR_MINUTES` minutes."""
    repo = os.environ.get(DATASET_ENV)
    if not repo:
        return None
    folder = db_path.parent / "mirror"
    try:
        from huggingface_hub import CommitScheduler, snapshot_download

        snapshot_download(repo, repo_type="dataset", local_dir=folder / "restored", allow_patterns=["votes/*.jsonl"])
        restore_votes(db_path, folder / "restored" / "votes")
        scheduler = CommitScheduler(repo_id=repo, repo_type="dataset", folder_path=folder / "shards",
                                    path_in_repo="votes", every=MIRROR_MINUTES, private=True)
    except Exception:  # no hub (offline, no token): keep serving; the note in the tab says votes are not kept
        LOG.exception("arena: cannot mirror votes to the dataset %s", repo)
        return None
    return VoteMirror(folder / "shards", lock=scheduler.lock)


def arena_config(hosting: Hosting) -> ArenaConfig:
    """The arena's limits from the hosting caps (public: no repeated cached battles, no stored battle images)."""
    caps, max_live = hosting.caps, os.environ.get(MAX_LIVE_ENV)
    return ArenaConfig(votes_per_minute=caps.votes_per_minute, battles_per_minute=caps.battles_per_minute,
                       votes_per_day=caps.votes_per_day, min_view_seconds=caps.min_view_s,
                       live=os.environ.get(LIVE_ENV, "1") != "0",
                       max_live_seconds=float(max_live) if max_live else None,
                       repeat_cached=not hosting.public, save_images=not hosting.public)


class ArenaService:
    """Shared state of the tab: the pool, one `Arena` per (pool, cache) over the same database, the curated prompts.

    Per-visitor state (the open battle) lives in `gr.State`; the core keys rate limits, vote caps and battle
    ownership on the visitor's server-side identity (hashed with a salt before it is stored).

    Args:
        cache (`ModelCache`): the app's model cache; live battles generate through it (`make_generate_fn`, wrapped
            with ``spaces.GPU`` where the ``spaces`` package is importable).
        pool (`list[str]`, *optional*): model names; default: an admin's choice stored in the database, else
            ``$STUDIO_ARENA_POOL``, else `default_pool` (see the module docstring).
        db_path, cache_dir (*optional*): default `arena_dir()` ``/votes.db`` and `cache_root()`.
        settings (`dict`, *optional*): live generation settings; default `pool_settings(pool)`.
        config (`ArenaConfig`, *optional*): rate limits etc.; default `arena_config(hosting)`.
        hosting (`Hosting`, *optional*): mode and caps; default `studio.hosting.current()`.
    """

    def __init__(self, cache: ModelCache, *, pool: list[str] | None = None, db_path: str | Path | None = None,
                 cache_dir: str | Path | None = None, settings: dict | None = None,
                 config: ArenaConfig | None = None, hosting: Hosting | None = None):
        self.hosting = hosting or hosting_mod.current()
        self.fixed_pool, self.settings = pool if pool is not None else env_pool(), settings
        self.db_path = Path(db_path) if db_path else arena_dir() / "votes.db"
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self.config = config or arena_config(self.hosting)
        self.env_settings = env_settings(self.hosting.caps)  # checked at start-up, not at the first battle
        self.generate_fn = gpu_task(make_generate_fn(lambda name: cache.get(name, roots=model_roots())))
        self.prompts = load_prompt_set()
        self.mirror = start_mirror(self.db_path) if db_path is None else None
        self.startup_pool = None if self.fixed_pool is not None else default_pool(public=self.hosting.public)
        self._arenas: dict[tuple, tuple[Arena, dict]] = {}
        self._lock = threading.Lock()

    def has_cache(self) -> bool:
        return (self.cache_dir / CACHE_INDEX).is_file()

    def cached_models(self) -> set[str]:
        index = json.loads((self.cache_dir / CACHE_INDEX).read_text(encoding="utf-8"))
        return {m for e in index["entries"] for m in e["images"]}

    def pool(self) -> list[str]:
        chosen = read_setting(self.db_path, "pool")
        if chosen:
            return list(chosen)
        if self.fixed_pool is not None:
            return list(self.fixed_pool)
        return list(self.startup_pool) if self.hosting.public else default_pool()

    def set_pool(self, names: list[str]) -> list[str]:
        """An admin's pool (stored in the database: it survives restarts); [] goes back to the default."""
        names = [n.strip() for n in names if n.strip()]
        if len(names) > 64 or any(len(n) > self.hosting.caps.name_chars for n in names):
            raise ArenaError(f"the pool takes at most 64 model names of at most {self.hosting.caps.name_chars} "
                             "characters each")
        if names:
            known = {s.name for s in list_models()} | (self.cached_models() if self.has_cache() else set())
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ArenaError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            if len(set(names)) != len(names) or len(names) < 2:
                raise ArenaError("the pool needs at least two distinct models")
        write_setting(self.db_path, "pool", names or None)
        return self.pool()

    def arena(self) -> tuple[Arena, dict]:
        """The arena of the current pool and its live settings; raises `ArenaError` explaining how to add models
        when the pool is too small."""
        pool, cache_dir = self.pool(), self.cache_dir if self.has_cache() else None
        if not self.config.live and cache_dir is None:
            raise ArenaError("Live generation is off and there is no battle cache yet; build one with "
                             f"`python -m studio arena-cache --cache-dir {display_path(self.cache_dir)} --models "
                             f"{' '.join(pool) or 'MODEL-1 MODEL-2'}`.")
        if not self.config.live and self.fixed_pool is None:  # cache only: battle what the cache holds
            cached = self.cached_models()
            pool = [m for m in pool if m in cached] if len(set(pool) & cached) >= 2 else sorted(cached)
        if len(set(pool)) < 2:
            raise ArenaError(how_to_add_models(pool))
        key = (tuple(pool), cache_dir)
        with self._lock:
            if key not in self._arenas:
                settings = (self.settings if self.settings is not None
                            else {**pool_settings(pool), **self.env_settings})
                self._arenas[key] = (Arena(self.db_path, pool, self.generate_fn, cache_dir=cache_dir,
                                           config=self.config, prompts=self.prompts, mirror=self.mirror), settings)
            return self._arenas[key]

    def new_battle(self, prompt: str | None, voter: str, category: str | None) -> dict:
        if prompt is not None and not isinstance(prompt, str):
            raise ArenaError(f"the prompt must be text; got {type(prompt).__name__}")
        if prompt and len(prompt) > self.hosting.caps.text_chars:
            raise ArenaError(f"the prompt has {len(prompt):,} characters; this arena takes at most "
                             f"{self.hosting.caps.text_chars:,} ({hosting_mod.CAP_ENV['text_chars'][0]})")
        arena, settings = self.arena()
        return arena.new_battle(prompt, voter, settings, category=category)

    def vote(self, battle_id: str, vote: str, voter: str) -> dict:
        return self.arena()[0].vote(battle_id, vote, voter)

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


def _category(value: str | None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ArenaError(f"category must be text; got {type(value).__name__}")
    return None if value in (None, "", ALL) else value


def _buttons(interactive: bool) -> list:
    return [gr.update(interactive=interactive) for _ in VOTES]


def _battle_info(battle: dict) -> str:
    """Prompt and category only: the seed and settings would let a voter replay the battle (shown after the vote)."""
    text = f"**Prompt:** {_md(battle['prompt'])}  \n*category {_md(battle['category'])}*"
    if battle["source"] == "cache":
        text += f"  \n*Note: this battle was {CACHE_NOTE} (no live generation).*"
    return text


def _settings_text(result: dict) -> str:
    s = result["settings"]
    size = f"{s['width']}×{s['height']}" if s.get("width") else "native size"
    details = "".join(f" · {k} {s[k]}" for k in ("steps", "guidance") if k in s)
    return f"seed {result['seed']} · {size}{details}"


def _md(text: str) -> str:
    """Visitor text shown as Markdown, inert: no HTML, links or emphasis of its own."""
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~" else c for c in str(text))


class ArenaHandlers:
    """Event handlers bound to one `ArenaService`; every user error becomes a `gr.Error` toast."""

    def __init__(self, service: ArenaService):
        self.service = service

    def _voter(self, request: gr.Request | None) -> str:
        return access.visitor(request, self.service.hosting).key

    def on_draw_prompt(self, category: str) -> str:
        try:
            return self.service.draw(_category(category)).text
        except ArenaError as err:
            raise gr.Error(str(err)) from err

    def on_battle(self, prompt: str, category: str, request: gr.Request):
        """Both anonymous images of a new battle in one response; names, seed and settings stay on the server
        until the vote."""
        try:
            battle = self.service.new_battle(prompt, self._voter(request), _category(category))
        except ArenaError as err:
            raise gr.Error(str(err)) from err
        # images, not files of the data folder: Gradio writes them to its own cache for this visitor
        images = [gr.update(value=battle["images"][label], label=label) for label in LABELS]
        reveal = "Which image fits the prompt better? Vote to reveal the models."
        return (*images, _battle_info(battle), reveal, *_buttons(True), battle["battle_id"])

    def on_vote(self, vote: str, battle_id: str | None, request: gr.Request):
        """Record the one vote of this visitor's battle, reveal both names and disable the vote buttons."""
        if not battle_id:
            raise gr.Error("Start a battle first (“New battle”).")
        try:
            result = self.service.vote(battle_id, vote, self._voter(request))
        except ArenaError as err:
            raise gr.Error(str(err)) from err
        names = [result[label] for label in LABELS]
        outcome = f"winner **{result['winner']}**" if result["winner"] else "no winner"
        reveal = (f"### {LABELS[0]}: {names[0]} · {LABELS[1]}: {names[1]}\nYou voted *{VOTE_LABELS[vote]}* — "
                  f"{outcome}. Both drew with {_settings_text(result)}. Thanks! Start a new battle for the next "
                  "vote.")
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

    def on_export(self, fmt: str, request: gr.Request) -> str:
        """All votes as CSV or JSON (model names, sides, vote, prompt, settings). Admins (everyone, locally) get
        voter pseudonyms rotated for this export; anonymous visitors of a public studio get none."""
        if fmt not in ("csv", "json"):
            raise gr.Error(f"export format must be one of csv, json; got {str(fmt)[:40]!r}")
        if not self.service.db_path.is_file():
            raise gr.Error("No votes yet.")
        voters = "rotate" if access.visitor(request, self.service.hosting).admin else "drop"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"arena-votes-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
            export_votes(self.service.db_path, out, fmt, voters=voters)
            return deliverable(out)

    def on_set_pool(self, names: str, request: gr.Request) -> str:
        """Admins: the arena pool as comma-separated model names (empty = back to the default)."""
        access.require_admin(request, "Changing the arena pool", self.service.hosting)
        try:
            pool = self.service.set_pool(str(names or "").split(","))
        except ArenaError as err:
            raise gr.Error(str(err)) from err
        return f"Arena pool: {', '.join(pool) or '(none)'}"


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
                    config: ArenaConfig | None = None, hosting: Hosting | None = None) -> ArenaService:
    """Battle and Leaderboard sub-tabs; see `ArenaService` for the options. Returns the service (for tests)."""
    service = ArenaService(cache, pool=pool, db_path=db_path, cache_dir=cache_dir, settings=settings, config=config,
                           hosting=hosting)
    handlers = ArenaHandlers(service)
    categories = [ALL, *service.categories()]
    default_category = DEMO_CATEGORY if service.fixed_pool is None and DEMO_CATEGORY in categories else ALL
    with gr.Tab("Battle", elem_id="arena-battle"):
        gr.Markdown("**Blind arena** — two anonymous models draw the same prompt with the same seed. Vote for the "
                    "better image; the names are revealed after your vote (one vote per battle).")
        current = service.pool()
        if len(set(current)) < 2:
            gr.Markdown(f"**Note:** {how_to_add_models(current)}")
        if note := persistence_note():
            gr.Markdown(note, elem_id="arena-persistence")
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
    with gr.Tab("Leaderboard", elem_id="arena-board") as board_tab:
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
            export_file = gr.File(label="Votes export", interactive=False, height=120, elem_id="arena-export-file")
        with gr.Accordion("Arena pool (admins)", open=False):
            with gr.Row():
                pool_names = gr.Textbox(label="Models, comma-separated (empty = the default pool)", scale=4,
                                        value="" if service.hosting.public else ", ".join(current))
                set_pool = gr.Button("Set pool", scale=0)
            pool_info = gr.Markdown()

    draw.click(handlers.on_draw_prompt, category, prompt, api_name="arena_draw_prompt")
    battle_lane = access.lane("gpu" if service.config.live else "arena", service.hosting)  # cache-only: no GPU
    battle_btn.click(handlers.on_battle, [prompt, category], [*images, info, reveal, *vote_btns.values(), battle_id],
                     api_name="arena_battle", **battle_lane)
    vote_outputs = [*images, reveal, *vote_btns.values()]
    vote_api.click(handlers.on_vote, [vote_choice, battle_id], vote_outputs, api_name="arena_vote")
    for vote, button in vote_btns.items():
        button.click(_vote_button_fn(handlers, vote), battle_id, vote_outputs, api_visibility="private")
    board_inputs, board_outputs = [board_category, since, until], [table, heatmap, summary]
    refresh.click(handlers.on_leaderboard, board_inputs, board_outputs, api_name="arena_leaderboard")
    board_tab.select(handlers.on_leaderboard, board_inputs, board_outputs, api_visibility="private")
    export.click(handlers.on_export, fmt, export_file, api_name="arena_export")
    set_pool.click(handlers.on_set_pool, pool_names, pool_info, api_name="arena_set_pool")
    return service
