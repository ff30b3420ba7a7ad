"""The arena as the app serves it: the pool, the live-battle settings, the votes database and its mirror, one
`studio.arena.Arena` per pool — everything of the Arena tab that is not widgets (``studio/ui/arena_tab.py``).

    service = ArenaService(cache, hosting=hosting)
    battle = service.new_battle(prompt="", voter=visitor.key, category="shapes")

The pool: an admin's choice (stored in the votes database), else ``$STUDIO_ARENA_POOL`` ("a,b,c"), else the demo
family — in local mode with the students exported from it, resolved on every battle; in public mode only the
built-in demo models: nothing joins a public pool by itself. ``$STUDIO_ARENA_MIN_VOTES`` (default 20): a model's
leaderboard rating is provisional below that many votes.

Conditional models (``ModelSpec.conditional``, e.g. demo-sr's super-resolution) never battle: a battle is one prompt
drawn for two text-to-image models, and there is no condition image to give them — deriving one (a picture of the
prompt, downsampled) would hand one side the answer and unblind the pair. The default pool leaves them out, an
admin's pool refuses them with that reason, and a pool from ``$STUDIO_ARENA_POOL`` drops them with a logged warning.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import threading
from pathlib import Path

from studio import hosting as hosting_mod
from studio.arena import Arena, ArenaConfig
from studio.arena_cache import CACHE_INDEX, ArenaError, PromptItem, draw_prompt, load_prompt_set
from studio.arena_cli import NOT_IN_BATTLES, SETTING_KEYS, make_generate_fn
from studio.arena_votes import VoteMirror, load_votes, read_setting, restore_votes, write_setting
from studio.demo.shapes import COLOURS, DEMO_WORDS, SHAPES
from studio.hosting import Hosting, display_path, gpu_task
from studio.loading import ModelCache
from studio.paths import DEMO_DIR, data_dir, model_roots, models_dir
from studio.ratings import RatingConfig
from studio.registry import list_models

POOL_ENV = "STUDIO_ARENA_POOL"  # comma-separated model names; default: the demo family in the registry
DATASET_ENV = hosting_mod.VOTES_DATASET_ENV  # "user/name": mirror votes to this Hub dataset (CommitScheduler)
MIRROR_MINUTES = 5
LIVE_ENV = "STUDIO_ARENA_LIVE"  # "0": never generate live, serve every battle from the cache
MAX_LIVE_ENV = "STUDIO_ARENA_MAX_LIVE_S"  # live battles slower than this (mean) fall back to the cache
SETTINGS_ENV = "STUDIO_ARENA_SETTINGS"  # JSON object, e.g. {"steps": 8}: overrides `pool_settings` of live battles
MIN_VOTES_ENV = "STUDIO_ARENA_MIN_VOTES"  # a model's rating is provisional below this many votes (default 20)
CACHE_NOTE = "served from the pre-generated battle cache"
ALL = "all"
DEMO_CATEGORY = "shapes"  # the demo family only knows the shapes vocabulary: the default category of its pool
LOG = logging.getLogger(__name__)


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


def conditional_names(names: list[str]) -> list[str]:
    """The registry's conditional models among ``names`` (names it does not know are left to the caller)."""
    conditional = {s.name for s in list_models() if s.conditional}
    return [n for n in names if n in conditional]


def battle_pool(names: list[str]) -> list[str]:
    """``names`` without conditional models (each one dropped is logged with the reason)."""
    dropped = conditional_names(names)
    if dropped:
        LOG.warning("arena pool: %s", NOT_IN_BATTLES.format(names=", ".join(dropped)))
    return [n for n in names if n not in dropped]


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
    return [s.name for s in specs if s.name in family and not s.conditional]


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


def env_min_votes() -> int:
    """``$STUDIO_ARENA_MIN_VOTES`` (1-100000), else `RatingConfig`'s default (20)."""
    text = os.environ.get(MIN_VOTES_ENV, "").strip()
    if not text:
        return RatingConfig().min_votes
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise ValueError(f"{MIN_VOTES_ENV} must be a whole number of votes between 1 and 100000; got {text[:40]!r}")
    return int(text)


def is_demo_pool(pool: list[str]) -> bool:
    """Every model of the pool is the embedded demo family or a student exported from it (shapes vocabulary)."""
    specs = {s.name: s for s in list_models()}
    return bool(pool) and all(name.startswith("demo-") or (name in specs and specs[name].base
                                                         and specs[name].base.startswith("demo-")) for name in pool)


def prompt_hint(prompt: str | None, pool: list[str]) -> str:
    """For a pool of demo models, what to do about a prompt with words they never saw ('' when it is fine)."""
    words = [w.strip(".,;:!?\"'()").lower() for w in str(prompt or "").split()]
    unknown = sorted({w for w in words if w and w not in DEMO_WORDS and w not in ("an", "orange", "heart")})
    if not unknown or not is_demo_pool(pool):
        return ""
    shown = ", ".join(unknown[:6]) + (" …" if len(unknown) > 6 else "")
    return (f"The demo models only know coloured shapes: `a <colour> <shape> on a <colour> background` "
            f"(colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}). Words they never saw ({shown}) make "
            "both images blobs. Use **Draw a prompt** (category *shapes*) for a prompt they know.")


def pool_line(pool: list[str]) -> str:
    """The pool as the Battle tab lists it: the names are public, which two are paired (and as which side) is not."""
    if len(set(pool)) < 2:
        return ""
    return (f"**Pool ({len(pool)} models):** {', '.join(pool)}. Each battle pairs two of them at random; which "
            "two, and which is A, stays hidden until you vote.")


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
        self.min_votes = env_min_votes()
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
            return battle_pool(list(chosen))
        if self.fixed_pool is not None:
            return battle_pool(list(self.fixed_pool))
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
            if conditional_names(names):
                raise ArenaError(NOT_IN_BATTLES.format(names=", ".join(conditional_names(names))))
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
