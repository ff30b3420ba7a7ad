"""Vote through N arena battles in headless Chromium, then open the leaderboard; save screenshots.

    python app.py &   # with the demo family (default pool) or STUDIO_ARENA_POOL=a,b
    python scripts/arena_votes.py http://127.0.0.1:7860 demo-teacher,demo-ssd,demo-vega 10 docs/arena-battle.png docs/arena-leaderboard.png

Before each vote it checks that no model name is visible; after it, that the names are revealed."""
import sys
import time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from playwright.sync_api import sync_playwright
from screenshot import CHROMIUM_FLAGS

url, pool, n, out_battle, out_board = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4], sys.argv[5]
VOTES = ["A", "B", "A", "tie", "A", "B", "A", "bad", "A", "A", "B", "A"]

def arena_text(page):
    return " ".join(page.locator(sel).inner_text() for sel in ("#arena-info", "#arena-image-a", "#arena-image-b"))

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.goto(url)
    page.get_by_role("tab", name="Arena").click()
    page.get_by_role("tab", name="Battle").click()
    for i in range(n):
        old = page.locator("#arena-image-a img").get_attribute("src") if page.locator("#arena-image-a img").count() else None
        t = time.time()
        page.locator("#arena-new-battle").click()
        page.wait_for_function("""old => { const a = document.querySelector('#arena-image-a img');
            const b = document.querySelector('#arena-image-b img');
            const btn = document.querySelector('#arena-vote-A');
            return a && b && a.complete && b.complete && a.src !== old && btn && !btn.disabled; }""", arg=old, timeout=300_000)
        leaked = [m for m in pool if m in arena_text(page)]
        assert not leaked, f"battle {i}: names visible before the vote: {leaked}"
        if i == n - 1:
            page.wait_for_timeout(500)
            page.screenshot(path=out_battle.replace(".png", "-blind.png"), full_page=True)
        page.locator(f"#arena-vote-{VOTES[i % len(VOTES)]}").click()
        page.wait_for_function("() => document.querySelector('#arena-vote-A').disabled", timeout=60_000)
        reveal = page.locator("#arena-reveal").inner_text()
        assert all(any(m in reveal for m in pool) for _ in [0]), reveal
        print(f"battle {i + 1}: {time.time() - t:.1f}s; {reveal.splitlines()[0]}", flush=True)
    page.wait_for_timeout(500)
    page.screenshot(path=out_battle, full_page=True)
    page.get_by_role("tab", name="Leaderboard").click()
    page.wait_for_function("() => document.querySelectorAll('#arena-leaderboard [role=row]').length >= 3", timeout=120_000)
    page.wait_for_selector("#arena-heatmap img, #arena-heatmap svg, #arena-heatmap canvas", timeout=60_000)
    page.wait_for_timeout(1500)
    print(page.locator("#arena-leaderboard").inner_text())
    print(page.locator("#arena-summary").inner_text())
    page.screenshot(path=out_board, full_page=True)
    browser.close()
