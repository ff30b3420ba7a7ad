"""The arena end to end with the real demo family: real pipelines loaded through the model cache draw a battle, the
vote reveals which model drew which image, and the leaderboard counts it. (The other arena tests draw with a fast
stand-in generator, as they test the arena's own logic: hidden names, one vote per battle, rate limits, the cache.)"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.arena import LABELS, Arena, ArenaConfig
from studio.arena_cache import load_prompt_set
from studio.arena_cli import make_generate_fn
from studio.generation import GenerateRequest, generate
from studio.loading import ModelCache
from studio.ratings import RatingConfig, leaderboard

POOL = ["demo-teacher", "demo-vega"]
SETTINGS = {"steps": 4, "guidance": 5.0, "width": 64, "height": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_battle_of_the_demo_family_through_the_model_cache(tmp_path):
    cache = ModelCache()
    arena = Arena(tmp_path / "votes.db", POOL, make_generate_fn(cache.get),
                  config=ArenaConfig(votes_per_minute=None, battles_per_minute=None))
    prompt = next(item.text for item in load_prompt_set() if item.category == "shapes")
    battle = arena.new_battle(prompt, "session-1", SETTINGS, seed=7)
    assert battle["source"] == "live" and "seed" not in battle and "settings" not in battle  # no replay before the vote
    pixels = {label: np.asarray(battle["images"][label].convert("RGB")) for label in LABELS}
    assert all(p.shape == (64, 64, 3) for p in pixels.values())
    assert not np.array_equal(pixels[LABELS[0]], pixels[LABELS[1]])  # two different models drew them
    for label in LABELS:
        with Image.open(battle["paths"][label]) as saved:
            assert saved.info == {} and np.array_equal(np.asarray(saved.convert("RGB")), pixels[label])

    reveal = arena.vote(battle["battle_id"], "A", "session-1")
    assert sorted([reveal[LABELS[0]], reveal[LABELS[1]]]) == sorted(POOL) and reveal["seed"] == 7
    for label in LABELS:  # each image is what its model draws for this prompt, seed and settings
        model = reveal[label]
        direct = generate(cache.get(model), GenerateRequest(prompt=prompt, seed=7, **SETTINGS), model_name=model)
        assert np.array_equal(np.asarray(direct.images[0].convert("RGB")), pixels[label]), model

    rows = {r.model: r for r in leaderboard(arena.votes(), RatingConfig(bootstrap_rounds=0))}
    assert set(rows) == set(POOL) and rows[reveal[LABELS[0]]].win_rate == 1.0 and rows[reveal[LABELS[1]]].votes == 1
