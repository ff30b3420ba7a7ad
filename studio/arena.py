"""Blind A/B arena core: battles, votes, curated prompts and a pre-generated battle cache (no gradio here).

    arena = Arena("arena.db", ["ssd-1b", "vega"], generate_fn)   # generate_fn(model, prompt, seed, settings) -> PIL
    battle = arena.new_battle(None, voter)                       # {"battle_id", "images": {"Model A", "Model B"}, ...}
    reveal = arena.vote(battle["battle_id"], "A", voter)         # {"Model A": name, "Model B": name, "seed", ...}

``voter`` is the server-side identity of the visitor (``studio.hosting.Visitor.key``: the signed-in user or the
client address), never a client-chosen session id: rate limits, the daily vote cap and battle ownership count it.

Nothing before a vote identifies the models (Chatbot Arena / GenAI-Arena practice):
- the payload holds neither names nor name-derived file names, and images are rebuilt from raw pixels so no text
  chunk (e.g. A1111 ``parameters`` with ``Model:``) survives;
- the seed and the generation settings (what a replay in /generate would need) are revealed with the names;
- live battles are delivered at a deadline that does not depend on the pair (`LivePacer`), so latency says nothing;
- a voter is never served the same cached battle twice (``repeat_cached=False``): a revealed image cannot be
  recognised later.
A vote needs a battle served to that voter at least ``min_view_seconds`` earlier. Exports escape spreadsheet
formulas and keep, rotate or drop the voter pseudonyms. Storage is SQLite in WAL mode with one connection per
thread, a busy timeout and ``BEGIN IMMEDIATE`` transactions; `VoteMirror` appends each vote to JSONL shards (what
``huggingface_hub.CommitScheduler`` pushes to a dataset) and `restore_votes` reads them back.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import sqlite3
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from studio.arena_cache import (
    CACHE_INDEX,
    AlreadyVotedError,
    ArenaError,
    GenerateFn,
    PromptItem,
    RateLimitError,
    TooSoonError,
    UnknownBattleError,
    draw_prompt,
    load_prompt_set,
    save_anonymous,
    strip_image,
)
from studio.arena_votes import VoteMirror, connect, create_schema, load_votes

VOTES = ("A", "B", "tie", "bad")  # A is better / B is better / tie / both are bad
LABELS = ("Model A", "Model B")
MAX_SEED = 2**32 - 1
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArenaConfig:
    """How the arena serves battles and limits each voter (a server-side identity, see the module docstring)."""

    votes_per_minute: int | None = 20  # per voter; None = unlimited
    battles_per_minute: int | None = 10  # per voter; None = unlimited
    votes_per_day: int | None = None  # per voter, counted in the database (survives restarts); None = unlimited
    min_view_seconds: float = 0.0  # between a battle reaching its voter and the vote
    live: bool = True  # False: serve every battle from the cache (CPU hosting)
    max_live_seconds: float | None = None  # mean live time of a pair above this, with a cache present -> use cache
    pace_live: bool = True  # deliver live battles at a deadline independent of the pair (`LivePacer`)
    repeat_cached: bool = True  # False: never serve a voter a cached battle (prompt, seed) it has seen
    save_images: bool = True  # keep each battle's two PNGs under `image_dir` (audits); False: nothing on disk
    image_dir: str | None = None  # battle PNGs; default "<db dir>/arena_images"
    busy_timeout_ms: int = 30_000  # how long a writer waits for the SQLite lock

    def __post_init__(self):
        for name in ("votes_per_minute", "battles_per_minute", "votes_per_day"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"ArenaConfig.{name} must be an int >= 1 or None (unlimited), got {value!r}")
        if self.max_live_seconds is not None and not self.max_live_seconds > 0:
            raise ValueError(f"ArenaConfig.max_live_seconds must be > 0 or None, got {self.max_live_seconds!r}")
        if not (isinstance(self.min_view_seconds, (int, float)) and 0 <= self.min_view_seconds <= 600):
            raise ValueError(f"ArenaConfig.min_view_seconds must be between 0 and 600, got {self.min_view_seconds!r}")
        if not (isinstance(self.busy_timeout_ms, int) and self.busy_timeout_ms >= 0):
            raise ValueError(f"ArenaConfig.busy_timeout_ms must be an int >= 0, got {self.busy_timeout_ms!r}")


# ---------------------------------------------------------------------------------------------------------------
# the arena


class _RateLimiter:
    """Sliding one-minute window of event times per (kind, voter); thread-safe."""

    def __init__(self):
        self._lock, self._events = threading.Lock(), {}

    def hit(self, kind: str, voter: str, per_minute: int | None) -> None:
        if per_minute is None:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._events) > 10_000:  # forget idle voters so the table stays small
                self._events = {k: q for k, q in self._events.items() if q and now - q[-1] < 60.0}
            events = self._events.setdefault((kind, voter), deque())
            while events and now - events[0] >= 60.0:
                events.popleft()
            if len(events) >= per_minute:
                wait = 60.0 - (now - events[0])
                raise RateLimitError(f"Too many {kind}: at most {per_minute} per minute; "
                                     f"try again in {wait:.0f} s.")
            events.append(now)


class LivePacer:
    """Holds every live battle back to one deadline: the sum of the two slowest models' typical generation times
    (median of the last `window` per model) times `margin`. Every pair then answers after the same time, so the
    latency of a battle says nothing about which models drew it. A model with no timing yet is calibrated by
    generating with it inside the first battle that needs it (its image is discarded); a model's first generation
    is not counted (it includes loading the weights)."""

    def __init__(self, margin: float = 1.25, window: int = 9):
        self.margin, self._times, self._lock = margin, {}, threading.Lock()
        self.window, self.overruns, self._warm = window, 0, set()

    def record(self, model: str, seconds: float) -> None:
        with self._lock:
            if model not in self._warm:  # the first run loads the model: not a generation time
                self._warm.add(model)
                return
            self._times.setdefault(model, deque(maxlen=self.window)).append(seconds)

    def missing(self, pool: Sequence[str]) -> list[str]:
        with self._lock:
            return [m for m in pool if not self._times.get(m)]

    def deadline(self, pool: Sequence[str]) -> float:
        """Seconds from a battle's start to its delivery (0 while a pool model has no timing)."""
        with self._lock:
            if any(not self._times.get(m) for m in pool):
                return 0.0
            typical = sorted((statistics.median(self._times[m]) for m in pool), reverse=True)
        return self.margin * sum(typical[:2])


class Arena:
    """Blind A/B battles between models of `pool`, stored in the SQLite database `db_path`.

    Args:
        db_path (`str` or `Path`): database file; created (WAL mode) if missing.
        pool (`list[str]`, *optional*): model names to battle; None = every model of the cache.
        generate_fn (`GenerateFn`, *optional*): ``(model_name, prompt, seed, settings) -> PIL.Image``; None = no model
            loaded, battles come from the cache only.
        cache_dir (`str` or `Path`, *optional*): a folder written by `build_cache`.
        config (`ArenaConfig`, *optional*): rate limits, live/cache switch, pacing, image folder.
        prompts (`list[PromptItem]`, *optional*): prompts drawn when a battle has none; default the curated set.
        mirror (`VoteMirror`, *optional*): also append every vote to its JSONL shards.
    """

    def __init__(self, db_path: str | Path, pool: Sequence[str] | None = None, generate_fn: GenerateFn | None = None,
                 *, cache_dir: str | Path | None = None, config: ArenaConfig | None = None,
                 prompts: Sequence[PromptItem] | None = None, mirror: VoteMirror | None = None):
        self.db_path, self.config, self.generate_fn = Path(db_path), config or ArenaConfig(), generate_fn
        self.cache_dir, self.mirror = (Path(cache_dir) if cache_dir is not None else None), mirror
        self.cache = (json.loads((self.cache_dir / CACHE_INDEX).read_text(encoding="utf-8"))
                      if self.cache_dir is not None else None)
        if pool is None:
            if self.cache is None:
                raise ValueError("Arena: pool is required when there is no cache_dir")
            pool = sorted({m for e in self.cache["entries"] for m in e["images"]})
        self.pool = list(pool)
        if len(set(self.pool)) != len(self.pool) or len(self.pool) < 2:
            raise ValueError(f"Arena: pool must hold at least 2 distinct model names, got {self.pool!r}")
        if self.cache is None and (generate_fn is None or not self.config.live):
            raise ValueError("Arena: without live generation (generate_fn None or config.live False) a cache_dir "
                             "is required")
        self.prompts = list(prompts) if prompts is not None else load_prompt_set()
        self.image_dir = Path(self.config.image_dir or self.db_path.parent / "arena_images")
        if self.config.save_images:
            self.image_dir.mkdir(parents=True, exist_ok=True)
        self._rng = random.SystemRandom()  # sides, pairs and seeds must not be predictable
        self._limiter, self._lock, self._live_times = _RateLimiter(), threading.Lock(), deque(maxlen=5)
        self.pacer = LivePacer()
        self._local = threading.local()  # one SQLite connection per thread, closed when the thread ends
        con = self._connection()
        con.execute("PRAGMA journal_mode = WAL")
        create_schema(con)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('session_salt', ?)", (secrets.token_hex(16),))
        self._salt = con.execute("SELECT value FROM meta WHERE key = 'session_salt'").fetchone()[0]

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, reused across calls (closing the last connection checkpoints the WAL: slow)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = connect(self.db_path, self.config.busy_timeout_ms)
        return con

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        con = self._connection()
        try:
            con.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock between voters
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _anonymous(self, voter: str) -> str:
        """The stored pseudonym of a voter: a salted hash (the salt never leaves the database)."""
        return hashlib.sha256(f"{self._salt}:{voter}".encode()).hexdigest()[:16]

    # -- sampling -------------------------------------------------------------------------------------------

    def pair_weights(self, models: Sequence[str] | None = None) -> dict[tuple[str, str], float]:
        """Sampling weight 1 / (1 + votes so far) of each unordered pair: under-sampled pairs come up more often."""
        models = sorted(models if models is not None else self.pool)
        rows = self._connection().execute("SELECT model_a, model_b, COUNT(*) FROM votes GROUP BY model_a, model_b")
        counts: dict[frozenset, int] = {}
        for a, b, n in rows:
            counts[frozenset((a, b))] = counts.get(frozenset((a, b)), 0) + n
        return {(a, b): 1.0 / (1 + counts.get(frozenset((a, b)), 0))
                for i, a in enumerate(models) for b in models[i + 1:]}

    def _pick_pair(self, models: Sequence[str]) -> tuple[str, str]:
        weights = self.pair_weights(models)
        a, b = self._rng.choices(list(weights), weights=list(weights.values()))[0]
        return (a, b) if self._rng.random() < 0.5 else (b, a)  # random left/right

    def _use_cache(self) -> bool:
        if self.generate_fn is None or not self.config.live:
            return True
        limit, times = self.config.max_live_seconds, list(self._live_times)
        return self.cache is not None and limit is not None and bool(times) and sum(times) / len(times) > limit

    # -- battles --------------------------------------------------------------------------------------------

    def _from_cache(self, prompt: str | None, category: str | None, voter: str
                    ) -> tuple[dict, str, str, list[Image.Image]]:
        entries = [e for e in self.cache["entries"] if len(set(e["images"]) & set(self.pool)) >= 2
                   and (prompt is None or e["prompt"] == prompt) and (category is None or e["category"] == category)]
        if not entries:
            raise ArenaError("This prompt is not in the battle cache; leave the prompt empty to draw a cached one."
                             if prompt else f"The battle cache has no battles for category {category!r}.")
        if not self.config.repeat_cached:
            seen = {(r[0], r[1]) for r in self._connection().execute(
                "SELECT prompt, seed FROM battles WHERE session = ? AND source = 'cache'", (self._anonymous(voter),))}
            entries = [e for e in entries if (e["prompt"], e["seed"]) not in seen]
            if not entries:
                raise ArenaError("You have seen every cached battle for this choice — thank you! Try another "
                                 "category or prompt, or come back when the cache has grown.")
        entry = self._rng.choice(entries)
        a, b = self._pick_pair([m for m in self.pool if m in entry["images"]])
        images = []
        for m in (a, b):
            with Image.open(self.cache_dir / entry["images"][m]) as im:
                images.append(im.copy())
        return entry, a, b, images

    def _live(self, prompt: str, seed: int, settings: dict) -> tuple[str, str, list[Image.Image]]:
        a, b = self._pick_pair(self.pool)
        start = time.perf_counter()
        images = {}
        # the pair, then every pool model the pacer has no timing for yet (calibration; images discarded). A
        # model's first generation only warms it up, so a fresh model runs twice in the first battle.
        try:
            while todo := [m for m in (a, b) if m not in images] + (
                    self.pacer.missing(self.pool) if self.config.pace_live else []):
                for m in todo:
                    t0 = time.perf_counter()
                    images[m] = self.generate_fn(m, prompt, seed, dict(settings))
                    self.pacer.record(m, time.perf_counter() - t0)
        except Exception as exc:  # the message could name the model: log it server-side, show a neutral one
            LOG.exception("arena: live generation failed")
            raise ArenaError("Image generation failed; please start another battle.") from exc
        elapsed = time.perf_counter() - start
        with self._lock:
            self._live_times.append(elapsed)
        if self.config.pace_live:
            wait = self.pacer.deadline(self.pool) - elapsed
            if wait > 0:
                time.sleep(wait)
            else:
                self.pacer.overruns += 1
        return a, b, [images[a], images[b]]

    def new_battle(self, prompt: str | None, voter: str, settings: dict | None = None, *,
                   seed: int | None = None, category: str | None = None) -> dict:
        """Generate (or take from the cache) both images of a new battle and return its public payload.

        Args:
            prompt (`str`, *optional*): None or "" draws one from the curated set (or the cache), of `category`.
            voter (`str`): the visitor's server-side identity (``studio.hosting.Visitor.key``); rate-limited.
            settings (`dict`, *optional*): JSON-serialisable generation settings, the same for both models; give
                width and height, or a difference in native size could hint at the model.
            seed (`int`, *optional*): shared by both images; None or -1 = random.

        A cached battle (generate_fn None, ``config.live`` False, or live generation slower than
        ``config.max_live_seconds``) takes prompt, seed and settings from a cache entry instead.

        Returns: ``{"battle_id", "prompt", "category", "source" ("live" or "cache"), "images": {"Model A": PIL,
        "Model B": PIL}}`` plus ``"paths"`` when images are saved — no model names, no seed, no settings (those
        come with the names in `vote`'s reveal).
        """
        self._limiter.hit("battles", voter, self.config.battles_per_minute)
        settings = dict(settings or {})
        try:
            settings_json = json.dumps(settings, sort_keys=True)
        except TypeError as exc:
            raise ArenaError(f"settings must be JSON-serialisable: {exc}") from None
        prompt = prompt.strip() if prompt else None
        cached = self._use_cache() and (prompt is None or self.generate_fn is None or not self.config.live
                                        or any(e["prompt"] == prompt for e in self.cache["entries"]))
        if cached:
            entry, a, b, images = self._from_cache(prompt, category, voter)
            prompt, category, seed = entry["prompt"], entry["category"], entry["seed"]
            settings_json = json.dumps(self.cache["settings"], sort_keys=True)
        else:
            if prompt is None:
                item = draw_prompt(self.prompts, category=category, rng=self._rng)
                prompt, category = item.text, item.category
            else:
                category = next((i.category for i in self.prompts if i.text == prompt), "custom")
            if seed is not None and seed != -1 and not 0 <= seed <= MAX_SEED:
                raise ArenaError(f"seed must be -1 (random) or between 0 and {MAX_SEED}; got {seed!r}")
            seed = self._rng.randrange(MAX_SEED + 1) if seed in (None, -1) else int(seed)
            a, b, images = self._live(prompt, seed, settings)
        clean = [strip_image(im) for im in images]
        paths = [save_anonymous(im, self.image_dir)[1] if self.config.save_images else None for im in clean]
        battle_id = secrets.token_urlsafe(16)
        self._connection().execute(
            "INSERT INTO battles (id, created_at, prompt, category, settings, model_a, model_b, seed, status, source,"
            " image_a, image_b, session, served_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)",
            (battle_id, time.time(), prompt, category, settings_json, a, b, seed, "cache" if cached else "live",
             str(paths[0] or ""), str(paths[1] or ""), self._anonymous(voter), time.time()))
        battle = {"battle_id": battle_id, "prompt": prompt, "category": category,
                  "source": "cache" if cached else "live", "images": dict(zip(LABELS, clean))}
        if self.config.save_images:
            battle["paths"] = dict(zip(LABELS, (str(p) for p in paths)))
        return battle

    def vote(self, battle_id: str, vote: str, voter: str) -> dict:
        """Record the one vote of a battle (only from the voter it was served to, at least
        ``config.min_view_seconds`` after it was served) and reveal the models, the seed and the settings.

        Returns: ``{"battle_id", "vote", "Model A": name, "Model B": name, "winner": name or None, "source", "seed",
        "settings", "prompt"}``.
        """
        if vote not in VOTES:
            raise ArenaError(f"vote must be one of {', '.join(VOTES)}; got {vote!r}")
        self._limiter.hit("votes", voter, self.config.votes_per_minute)
        pseudonym, now = self._anonymous(voter), time.time()
        with self._transaction() as con:
            battle = con.execute("SELECT * FROM battles WHERE id = ?", (str(battle_id),)).fetchone()
            if battle is None:
                raise UnknownBattleError(f"Unknown battle id {str(battle_id)[:40]!r}; start a new battle.")
            if battle["session"] != pseudonym:
                raise ArenaError("This battle was served to someone else; start a new battle.")
            if battle["status"] == "voted":
                raise AlreadyVotedError("This battle already has its vote; start a new battle.")
            looked = now - (battle["served_at"] or battle["created_at"])
            if looked < self.config.min_view_seconds:
                raise TooSoonError(f"Please look at both images for at least {self.config.min_view_seconds:g} s "
                                   f"before voting ({self.config.min_view_seconds - looked:.1f} s to go).")
            if self.config.votes_per_day is not None:
                (today,) = con.execute("SELECT COUNT(*) FROM votes WHERE session = ? AND created_at > ?",
                                       (pseudonym, now - 86400)).fetchone()
                if today >= self.config.votes_per_day:
                    raise RateLimitError(f"Thank you for {today} votes today — that is this arena's daily "
                                         f"maximum of {self.config.votes_per_day}; come back tomorrow.")
            winner = {"A": battle["model_a"], "B": battle["model_b"]}.get(vote)
            cursor = con.execute(
                "INSERT INTO votes (battle_id, created_at, vote, model_a, model_b, winner, prompt, category,"
                " settings, seed, source, session) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (battle["id"], now, vote, battle["model_a"], battle["model_b"], winner, battle["prompt"],
                 battle["category"], battle["settings"], battle["seed"], battle["source"], pseudonym))
            con.execute("UPDATE battles SET status = 'voted' WHERE id = ?", (battle["id"],))
        settings = json.loads(battle["settings"])
        if self.mirror is not None:
            try:  # the vote is in the database already: a failing mirror must not turn it into an error
                self.mirror.write({"id": cursor.lastrowid, "battle_id": battle["id"], "created_at": now,
                                   "vote": vote, "model_a": battle["model_a"], "model_b": battle["model_b"],
                                   "winner": winner, "prompt": battle["prompt"], "category": battle["category"],
                                   "settings": settings, "seed": battle["seed"], "source": battle["source"],
                                   "voter": pseudonym})
            except OSError:
                LOG.exception("arena: could not mirror a vote to %s", self.mirror.folder)
        return {"battle_id": battle["id"], "vote": vote, LABELS[0]: battle["model_a"], LABELS[1]: battle["model_b"],
                "winner": winner, "source": battle["source"], "seed": battle["seed"], "settings": settings,
                "prompt": battle["prompt"]}

    def votes(self) -> list[dict]:
        """Every vote in time order (see `load_votes`)."""
        return load_votes(self.db_path)
