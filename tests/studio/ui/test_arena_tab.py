"""Arena tab through gradio_client on a live localhost server: hidden names before the vote, reveal, one vote per
battle, leaderboard and export endpoints, the cache-only path, and the pool fallback message."""
import json
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client
from PIL import Image

from studio.arena import ArenaConfig
from studio.arena_cache import build_cache
from studio.arena_service import CACHE_NOTE, POOL_ENV, default_pool
from studio.loading import ModelCache
from studio.ui import build_app, launch
from studio.ui.arena_tab import build_arena_tab
from tests.studio.ui import free_port

POOL = ["tiny-base", "tiny-student"]
NO_LIMITS = ArenaConfig(votes_per_minute=None, battles_per_minute=None)
SETTINGS = {"steps": 2, "width": 32, "height": 32}




def serve(demo):
    _, url, _ = launch(demo, prevent_thread_lock=True, server_port=free_port(), quiet=True)
    return Client(url, verbose=False)


def names_in(value) -> set[str]:
    """Pool names found anywhere in a serialised API response, or in the metadata of the images it points to."""
    text = json.dumps(value, default=str)
    for item in value:
        path = item.get("value") if isinstance(item, dict) else item
        if isinstance(path, str) and path.endswith(".png") and Path(path).is_file():
            with Image.open(path) as im:
                text += json.dumps({**im.info}, default=str) + path
    return {m for m in POOL if m in text}


def image_path(item) -> str:
    return item["value"] if isinstance(item, dict) else item


@pytest.fixture(scope="module")
def live(family, tmp_path_factory):
    """The full app (Generate + Arena) with the arena pool from the environment, as `python app.py` builds it."""
    mp = pytest.MonkeyPatch()
    mp.setenv(POOL_ENV, ",".join(POOL))
    demo = build_app(ModelCache())
    mp.undo()
    client = serve(demo)
    yield client
    demo.close()


def battle(client, prompt=""):
    return client.predict(prompt, "all", api_name="/arena_battle")


def test_battle_hides_names_until_the_vote(live):
    result = battle(live, "a red circle")
    image_a, image_b, info, reveal = result
    assert Path(image_path(image_a)).is_file() and Path(image_path(image_b)).is_file()
    assert "a red circle" in info and CACHE_NOTE not in info
    assert names_in(result) == set(), "a model name leaked before the vote"

    revealed = live.predict("A", api_name="/arena_vote")
    assert names_in(revealed) == set(POOL)  # the same search finds the names once they are meant to be there
    label_a, label_b, reveal = revealed  # buttons are not API outputs
    assert all(m in reveal for m in POOL) and "winner" in reveal
    revealed = json.dumps([label_a, label_b])
    assert "Model A: tiny-" in revealed and "Model B: tiny-" in revealed

    with pytest.raises(Exception, match="already has its vote"):
        live.predict("B", api_name="/arena_vote")


def test_vote_without_battle_is_refused(family):
    demo = gr.Blocks()
    with demo:
        build_arena_tab(ModelCache(), pool=POOL, settings=SETTINGS, config=NO_LIMITS)
    client = serve(demo)
    try:
        with pytest.raises(Exception, match="Start a battle first"):
            client.predict("tie", api_name="/arena_vote")
    finally:
        demo.close()


def test_leaderboard_and_export_after_votes(live):
    for vote in ("B", "tie"):
        battle(live)
        live.predict(vote, api_name="/arena_vote")
    table, plot, summary = live.predict("all", "", "", api_name="/arena_leaderboard")
    rows = table["data"]
    assert {r[1] for r in rows} == set(POOL) and [r[0] for r in rows] == [1, 2]
    assert all("–" in r[3] or r[3] == "n/a" for r in rows) and "votes" in summary
    assert plot is not None
    empty, _, note = live.predict("all", "2000-01-01", "2000-01-02", api_name="/arena_leaderboard")
    assert "No votes" in note
    path = live.predict("json", api_name="/arena_export")
    votes = json.loads(Path(path).read_text())
    assert len(votes) >= 2 and {v["vote"] for v in votes} >= {"B", "tie"}


def test_draw_prompt_from_category(live):
    prompt = live.predict("shapes", api_name="/arena_draw_prompt")
    assert prompt.startswith("a ") and "background" in prompt


def test_cache_only_battles_need_no_model(family, tmp_path):
    def painter(model, prompt, seed, settings):
        return Image.new("RGB", (16, 16), (255, 0, 0) if model == POOL[0] else (0, 0, 255))

    build_cache(POOL, ["a red circle on a green background"], [0, 1], painter, tmp_path / "cache")
    models = ModelCache()
    demo = gr.Blocks()
    with demo:
        # no pool given and none in the registry's demo family: cache-only battles use the cache's models
        build_arena_tab(models, db_path=tmp_path / "votes.db", cache_dir=tmp_path / "cache",
                        config=ArenaConfig(live=False, votes_per_minute=None, battles_per_minute=None))
    client = serve(demo)
    try:
        result = battle(client)
        assert CACHE_NOTE in result[2] and names_in(result) == set()
        _, _, reveal = client.predict("bad", api_name="/arena_vote")
        assert all(m in reveal for m in POOL)
        assert models.loaded() == []  # nothing was generated live
    finally:
        demo.close()


def test_default_pool_from_environment(monkeypatch, family):
    monkeypatch.setenv(POOL_ENV, "tiny-base, tiny-student")
    assert default_pool() == POOL
    monkeypatch.delenv(POOL_ENV)
    assert not set(POOL) & set(default_pool())  # the default is the demo family, not every exported model


def test_too_small_pool_explains_how_to_add_models(family):
    demo = gr.Blocks()
    with demo:
        build_arena_tab(ModelCache(), pool=["tiny-base"], config=NO_LIMITS)
    client = serve(demo)
    try:
        with pytest.raises(Exception, match="at least two models"):
            battle(client)
    finally:
        demo.close()


def test_visitor_text_is_inert_markdown():
    """A prompt is shown as text: no image fetched from elsewhere (it would leak voters' addresses), no link, no HTML."""
    from studio.ui.arena_tab import _battle_info

    hostile = ["![t](http://evil.example/t.png)", "[click](javascript:alert(1))", "<img src=x onerror=alert(1)>",
               "# huge heading", "**bold** `code` | table |"]
    for prompt in hostile:
        info = _battle_info({"prompt": prompt, "category": "custom", "source": "live"})
        shown = info.split("**Prompt:** ", 1)[1].split("  \n", 1)[0]
        assert all(c not in shown.replace("\\" + c, "") for c in "![]()<>#*`|"), shown


@pytest.mark.parametrize("value,match", [("not json", "JSON object"), ("[1, 2]", "keys among"),
                                         ('{"sampler": "Euler a"}', "keys among"), ('{"steps": true}', "positive"),
                                         ('{"steps": 1e9}', "positive"), ('{"steps": 0}', "positive"),
                                         ('{"width": 4096}', "STUDIO_MAX_SIZE"), ('{"steps": 31}', "STUDIO_MAX_STEPS")])
def test_arena_settings_from_the_environment_are_checked(monkeypatch, value, match):
    from studio.arena_service import SETTINGS_ENV, env_settings
    from studio.hosting import Caps

    monkeypatch.setenv(SETTINGS_ENV, value)
    with pytest.raises(ValueError, match=match):
        env_settings(Caps.defaults("public"))
    monkeypatch.setenv(SETTINGS_ENV, '{"steps": 8, "guidance": 4.5}')
    assert env_settings(Caps.defaults("public")) == {"steps": 8, "guidance": 4.5}


def test_battle_tab_lists_the_pool_and_the_leaderboard_marks_provisional_ratings(family, tmp_path, monkeypatch):
    """After one vote: "1 vote", both ratings provisional, no CI claimed; the pool is listed on the Battle tab."""
    from studio.arena_service import MIN_VOTES_ENV
    from studio.hosting import Hosting
    from studio.ui.arena_tab import ArenaHandlers

    monkeypatch.setenv(MIN_VOTES_ENV, "3")
    demo = gr.Blocks()
    with demo:
        service = build_arena_tab(ModelCache(), pool=POOL, db_path=tmp_path / "votes.db", settings=SETTINGS,
                                  config=NO_LIMITS, hosting=Hosting(mode="local"))
    listed = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "arena-pool")
    assert listed.value.startswith("**Pool (2 models):** tiny-base, tiny-student.")
    battle = service.new_battle("", "voter-1", None)
    service.vote(battle["battle_id"], "A", "voter-1")
    table, plot, summary = ArenaHandlers(service).on_leaderboard("all", "", "")
    assert summary.startswith("1 vote ·") and "fewer than 3 votes is **provisional**" in summary
    assert [row[2:4] for row in table] == [["—", "n/a"]] * 2  # no rating number, no CI while provisional
    assert [row[7] for row in table] == ["provisional: 1 of 3 votes"] * 2
