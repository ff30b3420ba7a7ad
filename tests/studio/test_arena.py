"""Arena core: hidden identities, one vote per battle, concurrency, rate limits, the battle cache, export and CLI."""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from studio.arena import LABELS, Arena, ArenaConfig
from studio.arena_cache import (
    AlreadyVotedError,
    ArenaError,
    PromptItem,
    RateLimitError,
    UnknownBattleError,
    build_cache,
    draw_prompt,
    load_prompt_set,
)
from studio.arena_cli import make_generate_fn, register
from studio.arena_votes import export_votes, load_votes, read_export

POOL = ["ssd-1b", "vega", "sdxl-base"]


def colour_of(model: str) -> tuple[int, int, int]:
    d = hashlib.sha256(model.encode()).digest()
    return d[0], d[1], d[2]


class DrawingGenerator:
    """A real tiny generator: a model-specific colour field with a seed-dependent square; records its calls.

    Like a careless generation layer it also writes the model name into ``image.info`` (A1111 ``parameters``), which
    the arena must strip.
    """

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay, self._lock = [], delay, threading.Lock()

    def __call__(self, model: str, prompt: str, seed: int, settings: dict) -> Image.Image:
        with self._lock:
            self.calls.append((model, prompt, seed, dict(settings)))
        if self.delay:
            time.sleep(self.delay)
        image = Image.new("RGB", (16, 16), colour_of(model))
        ImageDraw.Draw(image).rectangle([seed % 8, seed % 8, seed % 8 + 4, seed % 8 + 4], fill=(255, 255, 255))
        image.info["parameters"] = f"{prompt}\nSteps: 2, Seed: {seed}, Model: {model}"
        return image


def model_in_image(image: Image.Image) -> str:
    return next(m for m in POOL if image.getpixel((15, 15))[:3] == colour_of(m))


@pytest.fixture
def generator():
    return DrawingGenerator()


@pytest.fixture
def arena(tmp_path, generator):
    return Arena(tmp_path / "arena.db", POOL, generator, config=ArenaConfig(votes_per_minute=None,
                                                                          battles_per_minute=None))


class TestBattle:
    def test_payload_and_files_hide_models(self, arena, tmp_path):
        battle = arena.new_battle("a red circle on a green background", "s1", {"steps": 2})
        text = json.dumps(battle, default=str)
        assert set(battle["images"]) == set(LABELS) and battle["source"] == "live"
        for model in POOL:
            assert model not in text
            for path in battle["paths"].values():
                assert model not in Path(path).name
                assert model.encode() not in Path(path).read_bytes()
        for label in LABELS:
            assert battle["images"][label].info == {}
            with Image.open(battle["paths"][label]) as saved:
                assert saved.info == {} and not getattr(saved, "text", {})
                assert saved.tobytes() == battle["images"][label].tobytes()

    def test_same_seed_and_settings_distinct_models(self, arena, generator):
        battle = arena.new_battle("a purple star on a blue background", "s1", {"steps": 2, "cfg": 5.0}, seed=42)
        # the pair first, then the pacer's calibration: every pool model twice in all (warm-up, timed)
        (m1, p1, s1, set1), (m2, p2, s2, set2) = generator.calls[:2]
        assert m1 != m2 and p1 == p2 and s1 == s2 == 42 and set1 == set2 == {"steps": 2, "cfg": 5.0}
        assert sorted(c[0] for c in generator.calls) == sorted(POOL * 2) and battle["category"] == "shapes"
        reveal = arena.vote(battle["battle_id"], "tie", "s1")
        assert reveal["seed"] == 42 and reveal["settings"] == {"steps": 2, "cfg": 5.0}
        generator.calls.clear()
        arena.new_battle(None, "s1", seed=-1)
        assert len(generator.calls) == 2 and 0 <= generator.calls[0][2] <= 2**32 - 1
        with pytest.raises(ArenaError, match="seed must be"):
            arena.new_battle(None, "s1", seed=2**32)

    def test_seed_and_settings_hidden_until_the_vote(self, arena):
        """Issue 13 (2): the battle showed seed, steps, CFG and size; replaying them in /generate matched an image.
        The payload now carries nothing a replay needs; the reveal brings seed and settings with the names."""
        settings = {"steps": 2, "guidance": 5.0, "width": 16, "height": 16}
        battle = arena.new_battle("a red circle on a green background", "s1", settings, seed=987654)
        public = {k: v for k, v in battle.items() if k != "images"}
        assert set(public) == {"battle_id", "prompt", "category", "source", "paths"}
        text = json.dumps(public, default=str)
        assert "987654" not in text and "guidance" not in text and "steps" not in text
        reveal = arena.vote(battle["battle_id"], "A", "s1")
        assert reveal["seed"] == 987654 and reveal["settings"] == settings

    def test_vote_reveals_the_shown_models(self, arena):
        battle = arena.new_battle(None, "s1")
        reveal = arena.vote(battle["battle_id"], "B", "s1")
        for label in LABELS:
            assert reveal[label] == model_in_image(battle["images"][label])
        assert reveal["winner"] == reveal["Model B"] and reveal["Model A"] != reveal["Model B"]
        [row] = load_votes(arena.db_path)
        assert (row["model_a"], row["model_b"], row["vote"], row["prompt"]) == (
            reveal["Model A"], reveal["Model B"], "B", battle["prompt"])
        assert row["voter"] != "s1" and len(row["voter"]) == 16  # stored as a salted hash

    def test_both_sides_and_all_pairs_occur(self, arena):
        seen = set()
        for _ in range(60):
            battle = arena.new_battle(None, "s1")
            seen.add(tuple(model_in_image(battle["images"][label]) for label in LABELS))
        assert len(seen) == 6  # 3 pairs x 2 orders

    def test_under_sampled_pairs_weigh_more(self, tmp_path, generator):
        config = ArenaConfig(votes_per_minute=None, battles_per_minute=None)
        duo = Arena(tmp_path / "w.db", POOL[:2], generator, config=config)
        for _ in range(5):
            duo.vote(duo.new_battle(None, "s1")["battle_id"], "tie", "s1")
        arena = Arena(tmp_path / "w.db", POOL, generator, config=config)
        weights = arena.pair_weights()
        assert weights[("ssd-1b", "vega")] == pytest.approx(1 / 6)
        assert weights[("sdxl-base", "ssd-1b")] == weights[("sdxl-base", "vega")] == 1.0
        picked = [{model_in_image(b["images"][label]) for label in LABELS}
                  for b in (arena.new_battle(None, "s1") for _ in range(300))]
        share = sum(p == {"ssd-1b", "vega"} for p in picked) / len(picked)
        assert share < 0.2  # expected (1/6) / (2 + 1/6) = 7.7%; uniform would be 33%


class TestVote:
    def test_second_vote_refused(self, arena):
        battle = arena.new_battle(None, "s1")
        arena.vote(battle["battle_id"], "A", "s1")
        with pytest.raises(AlreadyVotedError, match="already"):
            arena.vote(battle["battle_id"], "B", "s1")
        assert len(load_votes(arena.db_path)) == 1

    def test_unknown_battle(self, arena):
        with pytest.raises(UnknownBattleError, match="Unknown battle"):
            arena.vote("nope", "A", "s1")

    def test_invalid_vote_names_allowed_values(self, arena):
        battle = arena.new_battle(None, "s1")
        with pytest.raises(ArenaError, match="A, B, tie, bad"):
            arena.vote(battle["battle_id"], "left", "s1")

    def test_other_voter_refused(self, arena):
        battle = arena.new_battle(None, "ip:10.0.0.1")
        with pytest.raises(ArenaError, match="served to someone else"):
            arena.vote(battle["battle_id"], "A", "ip:10.0.0.2")
        assert arena.vote(battle["battle_id"], "A", "ip:10.0.0.1")["vote"] == "A"

    def test_rate_limits(self, tmp_path, generator):
        arena = Arena(tmp_path / "a.db", POOL, generator, config=ArenaConfig(votes_per_minute=2, battles_per_minute=3))
        battles = [arena.new_battle(None, "s1") for _ in range(3)]
        with pytest.raises(RateLimitError, match="at most 3 per minute"):
            arena.new_battle(None, "s1")
        arena.vote(battles[0]["battle_id"], "A", "s1")
        arena.vote(battles[1]["battle_id"], "A", "s1")
        with pytest.raises(RateLimitError, match="at most 2 per minute"):
            arena.vote(battles[2]["battle_id"], "A", "s1")
        arena.new_battle(None, "s2")  # other sessions are unaffected

    def test_config_validation_names_field(self):
        with pytest.raises(ValueError, match="ArenaConfig.votes_per_minute"):
            ArenaConfig(votes_per_minute=0)
        with pytest.raises(ValueError, match="ArenaConfig.max_live_seconds"):
            ArenaConfig(max_live_seconds=-1)


class TestConcurrency:
    THREADS, PER_THREAD = 8, 200

    def test_parallel_voters_lose_nothing(self, arena):
        errors = []

        def voter(i: int) -> None:
            try:
                for _ in range(self.PER_THREAD):
                    battle = arena.new_battle(None, f"session-{i}")
                    arena.vote(battle["battle_id"], ("A", "B", "tie", "bad")[i % 4], f"session-{i}")
            except Exception as exc:  # surfaced below with the thread's traceback text
                errors.append(repr(exc))

        start = time.perf_counter()
        threads = [threading.Thread(target=voter, args=(i,)) for i in range(self.THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        votes = load_votes(arena.db_path)
        print(f"\n{self.THREADS} threads x {self.PER_THREAD} battles+votes: {len(votes)} rows in {wall:.2f} s")
        assert errors == []
        assert len(votes) == self.THREADS * self.PER_THREAD
        assert len({v["battle_id"] for v in votes}) == len(votes)

    def test_racing_votes_on_one_battle(self, arena):
        battle = arena.new_battle(None, "s1")
        outcomes, barrier = [], threading.Barrier(8)

        def race() -> None:
            barrier.wait()
            try:
                arena.vote(battle["battle_id"], "A", "s1")
                outcomes.append("ok")
            except AlreadyVotedError:
                outcomes.append("refused")

        threads = [threading.Thread(target=race) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["ok"] + ["refused"] * 7
        assert len(load_votes(arena.db_path)) == 1


class TestPrompts:
    def test_curated_set(self):
        items = load_prompt_set()
        assert {i.category for i in items} == {"shapes", "general"}
        from studio.demo.shapes import COLOURS, SHAPES

        colours = "|".join(COLOURS)  # the demo family's vocabulary, so every shapes prompt is scorable
        pattern = re.compile(rf"a ({colours}) ({'|'.join(SHAPES)}) on a ({colours}) background")
        shapes = [i.text for i in items if i.category == "shapes"]
        assert shapes and all(pattern.fullmatch(p) for p in shapes)
        assert {pattern.fullmatch(p).group(2) for p in shapes} == {"circle", "square", "triangle", "star", "ring",
                                                                  "cross"}

    def test_draw_by_category(self):
        items = load_prompt_set()
        assert draw_prompt(items, category="general").category == "general"
        with pytest.raises(ArenaError, match="general, shapes"):
            draw_prompt(items, category="animals")


class TestCache:
    PROMPTS = [PromptItem("shapes", "a red circle on a green background"), PromptItem("general", "a fox")]

    @pytest.fixture
    def cache_dir(self, tmp_path, generator):
        build_cache(POOL, self.PROMPTS, [0, 1], generator, tmp_path / "cache", settings={"steps": 2})
        return tmp_path / "cache"

    def test_build_is_resumable(self, cache_dir, generator):
        assert len(generator.calls) == len(POOL) * 2 * 2
        build_cache(POOL, self.PROMPTS, [0, 1], generator, cache_dir, settings={"steps": 2})
        assert len(generator.calls) == len(POOL) * 2 * 2
        for name in (p.name for p in cache_dir.glob("*.png")):
            assert all(m not in name for m in POOL)
        with pytest.raises(ValueError, match="differ"):
            build_cache(POOL, self.PROMPTS, [0], generator, cache_dir, settings={"steps": 4})

    def test_serves_without_a_model(self, tmp_path, cache_dir):
        arena = Arena(tmp_path / "c.db", None, None, cache_dir=cache_dir)
        assert sorted(arena.pool) == sorted(POOL)
        battle = arena.new_battle(None, "s1")
        assert battle["source"] == "cache" and "settings" not in battle and "seed" not in battle
        assert battle["prompt"] in {p.text for p in self.PROMPTS}
        text = json.dumps(battle, default=str)
        assert all(m not in text for m in POOL) and Path(battle["paths"]["Model A"]).parent == arena.image_dir
        reveal = arena.vote(battle["battle_id"], "A", "s1")
        assert reveal["source"] == "cache" and reveal["Model A"] == model_in_image(battle["images"]["Model A"])
        assert reveal["settings"] == {"steps": 2} and reveal["seed"] in (0, 1)
        assert load_votes(arena.db_path)[0]["source"] == "cache"
        assert arena.new_battle(None, "s1", category="general")["prompt"] == "a fox"
        with pytest.raises(ArenaError, match="not in the battle cache"):
            arena.new_battle("a purple ring on a black background", "s1")

    def test_slow_live_generation_falls_back_to_cache(self, tmp_path, cache_dir):
        slow = DrawingGenerator(delay=0.02)
        arena = Arena(tmp_path / "s.db", POOL, slow, cache_dir=cache_dir, config=ArenaConfig(max_live_seconds=0.01))
        assert arena.new_battle("a fox", "s1")["source"] == "live"
        assert arena.new_battle("a fox", "s1")["source"] == "cache"
        assert arena.new_battle("not cached", "s1")["source"] == "live"  # live is slow, not impossible
        off = Arena(tmp_path / "o.db", POOL, slow, cache_dir=cache_dir, config=ArenaConfig(live=False))
        assert off.new_battle(None, "s1")["source"] == "cache"

    def test_no_cache_no_model_is_an_error(self, tmp_path):
        with pytest.raises(ValueError, match="cache_dir"):
            Arena(tmp_path / "x.db", POOL, None)


def vote_some(arena: Arena, n: int) -> None:
    for i in range(n):
        battle = arena.new_battle(None, "s1", {"steps": 2})
        arena.vote(battle["battle_id"], ("A", "B", "tie", "bad")[i % 4], "s1")


class TestExportAndCli:
    @pytest.mark.parametrize("suffix", [".csv", ".json"])
    def test_export_round_trip(self, arena, tmp_path, suffix):
        vote_some(arena, 12)
        out = tmp_path / f"votes{suffix}"
        assert export_votes(arena.db_path, out, voters="keep") == 12
        assert read_export(out) == load_votes(arena.db_path)
        with pytest.raises(ValueError, match="csv, json"):
            export_votes(arena.db_path, tmp_path / "votes.xml")
        with pytest.raises(ValueError, match="not found"):
            export_votes(tmp_path / "missing.db", out)
        assert not (tmp_path / "missing.db").exists()

    def test_cli_subcommands(self, arena, tmp_path, capsys, generator):
        vote_some(arena, 20)
        parser = argparse.ArgumentParser(prog="studio")
        register(parser.add_subparsers(dest="command"), generate_fn_factory=lambda args: generator)

        def run(*argv: str) -> str:
            args = parser.parse_args(argv)
            assert args.func(args) == 0
            return capsys.readouterr().out

        out = run("leaderboard", "--db", str(arena.db_path), "--rounds", "20")
        assert all(m in out for m in POOL) and "95% CI" in out
        assert "no votes match" in run("leaderboard", "--db", str(arena.db_path), "--category", "none")
        run("arena-export", "--db", str(arena.db_path), "--out", str(tmp_path / "v.json"))
        assert len(read_export(tmp_path / "v.json")) == 20
        run("arena-cache", "--cache-dir", str(tmp_path / "cache"), "--models", *POOL[:2], "--category", "shapes",
            "--max-prompts", "2", "--seeds", "0", "1", "--settings", '{"steps": 2}')
        index = json.loads((tmp_path / "cache" / "index.json").read_text())
        assert len(index["entries"]) == 4 and index["settings"] == {"steps": 2}
        run("arena-cache", "--cache-dir", str(tmp_path / "random"), "--models", *POOL[:2], "--category", "shapes",
            "--max-prompts", "1", "--num-seeds", "2")
        seeds = [e["seed"] for e in json.loads((tmp_path / "random" / "index.json").read_text())["entries"]]
        assert len(seeds) == 2 and len(set(seeds)) == 2  # random seeds by default: a small known one is replayable
        out = run("arena-timing", "--models", *POOL, "--battles", "6", "--settings", '{"steps": 2}')
        assert "spread between pairs: unpaced" in out and out.count(" vs ") >= 2

    def test_main_cli_registers_arena_commands(self, arena, capsys):
        from studio.cli import main

        vote_some(arena, 8)
        assert main(["leaderboard", "--db", str(arena.db_path), "--rounds", "10"]) == 0
        out = capsys.readouterr().out
        assert all(m in out for m in POOL)


def test_studio_generate_fn_with_a_tiny_pipeline(tmp_path):
    """The adapter over the real generation layer, on the tests' tiny SDXL-layout pipeline (32 px, 2 steps)."""
    from tests.conftest import make_tiny_pipeline

    pipes = {"tiny-0": make_tiny_pipeline(seed=0), "tiny-7": make_tiny_pipeline(seed=7)}
    generate_fn = make_generate_fn(pipes.__getitem__)
    arena = Arena(tmp_path / "t.db", list(pipes), generate_fn)
    battle = arena.new_battle("a red circle on a blue background", "s1", {"steps": 2, "width": 32, "height": 32})
    assert all(im.size == (32, 32) for im in battle["images"].values())
    text = json.dumps(battle, default=str) + "".join(Path(p).read_bytes().decode("latin-1")
                                                     for p in battle["paths"].values())
    assert "tiny-0" not in text and "tiny-7" not in text
    with pytest.raises(ArenaError, match="generation failed"):  # unknown setting key: neutral message to voters
        arena.new_battle("a red circle on a blue background", "s1", {"sampler": "Euler"})
    with pytest.raises(ValueError, match="allowed: negative_prompt"):
        generate_fn("tiny-0", "a red circle", 0, {"sampler": "Euler"})
