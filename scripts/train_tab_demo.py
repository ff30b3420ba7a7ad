"""Drive the Train tab in headless Chromium as a user would: launch a preset, watch the loss, cancel, resume, wait for
the student, then generate with it next to the teacher. Screenshots and a timing line per stage.

    python app.py &
    python scripts/train_tab_demo.py --url http://127.0.0.1:7860 --name demo-vega-browser
"""
from __future__ import annotations

import argparse
import re
import time

from playwright.sync_api import sync_playwright

from screenshot import CHROMIUM_FLAGS, pick_models_and_generate


def summary_state(page) -> tuple[str, int, int]:
    """(status, step, total) read from the selected job's summary line."""
    text = page.locator("#job-summary").inner_text()
    match = re.search(r"(queued|running|cancelling|finished|failed|cancelled) · step (\d+)/(\d+)", text)
    return (match[1], int(match[2]), int(match[3])) if match else ("", 0, 0)


def wait_for(page, test, what: str, timeout_s: float) -> tuple[str, int, int]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        state = summary_state(page)
        if test(*state):
            return state
        page.wait_for_timeout(1000)
    raise TimeoutError(f"waited {timeout_s:.0f} s for {what}; last state {summary_state(page)}")


def main(args) -> None:
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {msg}", flush=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(args.url)
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("Preset", exact=True).click()
        page.get_by_role("option", name=args.preset, exact=True).click()
        page.get_by_label("Output name in the model list").fill(args.name)
        page.get_by_role("button", name="Launch", exact=True).click()
        page.wait_for_function("document.querySelector('#job-check').innerText.includes('launched')", timeout=60_000)
        log(f"launched preset {args.preset!r}")
        status, step, total = wait_for(page, lambda s, n, t: s == "running" and n >= args.cancel_at, "training steps",
                                       args.timeout)
        page.wait_for_timeout(3000)  # let the plot catch up with the summary
        page.screenshot(path=f"{args.out}/train-tab-running.png", full_page=True)
        log(f"running, step {step}/{total}: docs/train-tab-running.png")
        page.get_by_role("button", name="Cancel", exact=True).click()
        status, step, total = wait_for(page, lambda s, n, t: s == "cancelled", "the cancel", 120)
        page.screenshot(path=f"{args.out}/train-tab-cancelled.png", full_page=True)
        log(f"cancelled at step {step}/{total}: docs/train-tab-cancelled.png")
        stopped = step
        page.get_by_role("button", name="Resume", exact=True).click()
        status, step, total = wait_for(page, lambda s, n, t: s == "running" and n > stopped, "the resumed run",
                                       args.timeout)
        log(f"resumed, step {step}/{total}")
        status, step, total = wait_for(page, lambda s, n, t: s in ("finished", "failed"), "the end of the job",
                                       args.timeout)
        page.wait_for_timeout(3000)
        page.screenshot(path=f"{args.out}/train-tab.png", full_page=True)
        log(f"{status} at step {step}/{total}: docs/train-tab.png")
        if status != "finished":
            raise SystemExit(f"job {status}: {page.locator('#job-summary').inner_text()}")
        page.get_by_role("tab", name="Generate").click()
        pick_models_and_generate(page, [args.teacher, args.name], args.prompt, args.timeout)
        page.screenshot(path=f"{args.out}/train-generate.png", full_page=True)
        log("generated with the new student next to the teacher: docs/train-generate.png")
        browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--preset", default="Demo student, Vega recipe (CPU, 5 min)")
    parser.add_argument("--name", default="demo-vega-browser")
    parser.add_argument("--teacher", default="demo-teacher")
    parser.add_argument("--cancel_at", type=int, default=60, help="cancel once the job has passed this step")
    parser.add_argument("--prompt", default="a yellow star on a blue background")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=900)
    main(parser.parse_args())
