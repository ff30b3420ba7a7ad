"""The Arena in a real browser: local mode battle -> vote -> leaderboard; public mode keeps names and the seed off
the page and out of the API payload until the vote; an anonymous export carries no voter pseudonyms."""
from __future__ import annotations

import csv
import re

from studio.arena_service import default_pool
from tests.e2e.conftest import shot

DEMO = tuple(default_pool(public=True))  # the built-in demo models (family and few-step); local mode may add students


def named(text: str) -> list[str]:
    """The pool's models named in ``text`` as whole names ("demo-ssd" is not found inside "demo-ssd-lcm-lora")."""
    return [m for m in DEMO if re.search(rf"(?<![\w-]){re.escape(m)}(?![\w-])", text)]
# Keeps a copy of everything the page reads from Gradio's queue stream (a fetch of /queue/data read chunk by chunk).
RECORD_STREAM = """
window.__studio_messages = [];
const nativeFetch = window.fetch;
window.fetch = async (...args) => {
  const response = await nativeFetch(...args);
  const url = String((args[0] && args[0].url) || args[0]);
  if (!url.includes("/queue/data") || !response.body) return response;
  const [mine, theirs] = response.body.tee();
  (async () => {
    const reader = mine.getReader(), decoder = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      window.__studio_messages.push(decoder.decode(value, { stream: true }));
    }
  })();
  return new Response(theirs, { status: response.status, statusText: response.statusText, headers: response.headers });
};
"""


def messages(page, since: int = 0) -> str:
    """The stream text received since chunk ``since`` (see `stream_position`)."""
    return "".join(page.evaluate("window.__studio_messages")[since:])


def stream_position(page) -> int:
    return page.evaluate("window.__studio_messages.length")


def open_arena(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Arena").click()
    page.locator("#arena-new-battle").wait_for()


def start_battle(page) -> None:
    page.locator("#arena-new-battle").click()
    page.locator("#arena-image-a img").wait_for(timeout=240_000)  # the first battle loads two models (cold: ~45 s
    # on a quiet 2-core machine, more under load)
    page.locator("#arena-image-b img").wait_for()
    page.wait_for_function("!document.querySelector('#arena-vote-A').disabled")


def battle_text(page) -> str:
    """Everything the Battle tab shows or holds about the battle: its text, its HTML (image sources, labels, alt
    texts). The pool line lists every model of the pool by design: which two were paired is the secret."""
    tab = page.locator("#arena-battle")
    html = tab.inner_html()
    pool = page.locator("#arena-pool").inner_html()
    assert html.count(pool) == 1
    return tab.inner_text().replace(page.locator("#arena-pool").inner_text(), "") + html.replace(pool, "")


def test_local_battle_vote_leaderboard(local_studio, page):
    open_arena(page, local_studio.url)
    pool = page.locator("#arena-pool").inner_text()
    assert "Pool (" in pool and named(pool) == list(DEMO)  # the pool, not the pairing
    assert "Start here:" in page.locator("#arena-battle .studio-first-step").first.inner_text()
    start_battle(page)
    shot(page, "battle")
    page.locator("#arena-vote-A").click()
    page.locator("#arena-reveal").get_by_text("Model A:").wait_for()
    reveal = page.locator("#arena-reveal").inner_text()
    shown = named(reveal)
    assert len(shown) == 2 and "seed" in reveal
    assert page.locator("#arena-vote-B").is_disabled()  # one vote per battle
    shot(page, "revealed")
    page.get_by_role("tab", name="Leaderboard").click()
    page.wait_for_function("(names) => names.every((n) => document.querySelector('#arena-leaderboard').innerText"
                           ".includes(n))", arg=shown)
    assert "1 vote ·" in page.locator("#arena-summary").inner_text()
    board = page.locator("#arena-leaderboard").inner_text()
    assert board.count("provisional: 1 of 20 votes") == 2 and board.count("n/a") == 2 and board.count("—") == 2
    shot(page, "leaderboard")


def test_a_custom_prompt_on_the_demo_pool_gets_the_shapes_hint(local_studio, page):
    open_arena(page, local_studio.url)
    page.locator("#arena-prompt textarea").fill("an astronaut riding a horse")
    page.locator("#arena-prompt-hint").get_by_text("Draw a prompt").wait_for()
    hint = page.locator("#arena-prompt-hint").inner_text()
    assert "astronaut, horse, riding" in hint and "a <colour> <shape> on a <colour> background" in hint
    shot(page, "hint")
    page.locator("#arena-draw").click()  # a curated shapes prompt replaces it, and the hint goes away
    page.wait_for_function("() => !document.querySelector('#arena-prompt-hint').innerText.includes('Draw')")


def test_public_battle_hides_names_and_seed_until_the_vote(public_studio, page):
    page.add_init_script(RECORD_STREAM)
    open_arena(page, public_studio.url)
    assert "Public studio" in page.locator("#studio-mode").inner_text()
    page.wait_for_timeout(500)  # the Generate tab's model lists arrive at load (public knowledge, not a battle)
    since = stream_position(page)
    start_battle(page)
    before, api_before = battle_text(page), messages(page, since)
    assert "process_completed" in api_before and "/gradio_api/file=" in api_before  # the battle's payload is here
    shot(page, "before-vote")
    assert not [m for m in DEMO if m in before], "a model name is on the page before the vote"  # even inside words
    assert not [m for m in DEMO if m in api_before], "a model name is in the API payload before the vote"
    assert not re.search(r"seed\W{0,3}\d", before + api_before, re.IGNORECASE)  # no "seed 1234", "\"seed\": 1234"
    page.wait_for_timeout(1100)  # the public minimum viewing time of this app (STUDIO_MIN_VIEW_S=1)
    page.locator("#arena-vote-B").click()
    page.locator("#arena-reveal").get_by_text("Model A:").wait_for()
    after = page.locator("#arena-reveal").inner_text()
    assert len(named(after)) == 2
    seed = re.search(r"seed (\d+)", after).group(1)
    assert not re.search(rf"(?<![0-9a-f]){seed}(?![0-9a-f])", before + api_before)


def test_public_anonymous_export_has_no_pseudonyms(public_studio, page, tmp_path):
    open_arena(page, public_studio.url)
    page.get_by_role("tab", name="Leaderboard").click()
    page.locator("#arena-export").click()
    link = page.locator("#arena-export-file a").first
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    path = tmp_path / "votes.csv"
    download.value.save_as(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    shot(page, "export")
    assert rows and "voter" not in rows[0] and "session" not in rows[0]
    assert {rows[0]["model_a"], rows[0]["model_b"]} <= set(DEMO)
