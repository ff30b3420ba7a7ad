"""The arena service's newcomer help: the pool it lists, the hint for prompts the demo family cannot draw, and the
provisional-rating threshold from the environment (checked at start-up like the other arena settings)."""
from __future__ import annotations

import pytest

from studio.arena_service import MIN_VOTES_ENV, env_min_votes, is_demo_pool, pool_line, prompt_hint

DEMO = ["demo-teacher", "demo-ssd", "demo-vega"]


def test_the_pool_is_listed_but_not_the_pairing():
    line = pool_line(DEMO)
    assert line.startswith("**Pool (3 models):** demo-teacher, demo-ssd, demo-vega.") and "hidden until you vote" in line
    assert pool_line(["demo-teacher"]) == ""  # one model is no pool (the tab says how to add models instead)


def test_custom_prompts_on_the_demo_pool_get_the_shapes_hint():
    hint = prompt_hint("an astronaut riding a horse", DEMO)
    assert "Words they never saw (astronaut, horse, riding)" in hint and "Draw a prompt" in hint
    assert "red" in hint and "circle" in hint  # the vocabulary it does know
    assert prompt_hint("a red circle on a blue background", DEMO) == ""
    assert prompt_hint("an orange heart on a blue background", DEMO) == ""  # the demo LoRAs' words
    assert prompt_hint("", DEMO) == "" and prompt_hint(None, DEMO) == ""
    assert prompt_hint("an astronaut riding a horse", ["sdxl", "ssd-1b"]) == ""  # real models know the words
    assert is_demo_pool(DEMO) and not is_demo_pool(["demo-teacher", "sdxl"]) and not is_demo_pool([])


def test_min_votes_from_the_environment(monkeypatch):
    assert env_min_votes() == 20
    monkeypatch.setenv(MIN_VOTES_ENV, "5")
    assert env_min_votes() == 5
    for bad in ("0", "-3", "2.5", "many", "1000001"):
        monkeypatch.setenv(MIN_VOTES_ENV, bad)
        with pytest.raises(ValueError, match=f"{MIN_VOTES_ENV} must be a whole number"):
            env_min_votes()
