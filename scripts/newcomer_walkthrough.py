"""Walk the Layers and Train tabs as a newcomer would, in headless Chromium, and save a screenshot per stage (issue 16):
a recipe ticked with the block map, compare with 1 and 4 seeds, the sweep's time estimate; the Train form, the CLI
preview, a GPU preset's "what is missing", a running job's loss plot, the job after cancel.

    python app.py &
    python scripts/newcomer_walkthrough.py --url http://127.0.0.1:7860 --out docs/screenshots
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from screenshot import CHROMIUM_FLAGS


def pick(page, label: str, option: str) -> None:
    page.get_by_label(label).first.click()
    page.get_by_role("option", name=option, exact=True).click()


def layers(page, out: Path, log, timeout_s: float, args_skip_map: bool = False) -> None:
    page.get_by_role("tab", name="Layers").click()
    page.screenshot(path=out / "layers-first-screen.png")
    if not args_skip_map:
        page.get_by_role("button", name="Show block map").click()
        page.wait_for_function("document.querySelector('#layers-map').innerText.includes('conv_in')",
                               timeout=120_000)
        pick(page, "Recipe: ticks its units", "vega")
        page.wait_for_function("document.querySelector('#layers-plan').innerText.includes('vega')", timeout=60_000)
        page.wait_for_timeout(1000)
        title = page.locator("#layers-units label").nth(3).get_attribute("title")
        log(f"recipe ticked; hover title of the 4th unit: {title!r}")
        page.screenshot(path=out / "layers-recipe-ticked.png", full_page=True)
    page.locator("#layers-steps input[type=number]").fill("4")
    page.locator("#layers-steps input[type=number]").press("Tab")
    for seeds, name in (("0", "layers-compare-1-seed.png"), ("0, 1, 2, 3", "layers-compare-4-seeds.png")):
        page.get_by_label("Seeds (comma-separated").fill(seeds)
        page.get_by_role("button", name="Compare full vs ablated").click()
        n = len(seeds.split(","))
        page.wait_for_function(f"document.querySelectorAll('#layers-ablated img').length >= {n}",
                               timeout=timeout_s * 1000)
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Compare full vs ablated").scroll_into_view_if_needed()
        page.screenshot(path=out / name, full_page=True)
        log(f"compare with {n} seed(s): {name}")


def sweep_estimate(page, out: Path, log, timeout_s: float) -> None:
    page.get_by_role("tab", name="Layers").click()
    page.get_by_label("Seeds (comma-separated").fill("0")
    page.locator("#layers-steps input[type=number]").fill("40")  # a sweep long enough to be asked about
    page.locator("#layers-steps input[type=number]").press("Tab")
    page.get_by_role("tab", name="Sweep").click()
    page.locator("#layers-sweep").click()
    page.wait_for_function("document.querySelector('#layers-sweep-info').innerText.includes('≈')",
                           timeout=timeout_s * 1000)
    page.wait_for_timeout(1000)
    page.locator("#layers-sweep").scroll_into_view_if_needed()
    page.screenshot(path=out / "layers-sweep-estimate.png", full_page=True)
    log("sweep estimate: " + page.locator("#layers-sweep-info").inner_text()[:200])
    if page.locator("#layers-sweep-confirm").is_visible():
        log("asked before a long run: " + page.locator("#layers-sweep-confirm").inner_text())
    else:
        page.get_by_role("button", name="Cancel sweep").click()


def state(page) -> tuple[str, int]:
    m = re.search(r"\*?(queued|running|cancelling|finished|failed|cancelled)\*? · step (\d+)/",
                  page.locator("#job-summary").inner_text())
    return (m[1], int(m[2])) if m else ("", 0)


def train(page, out: Path, log, steps: int, cancel_at: int, timeout_s: float) -> None:
    page.get_by_role("tab", name="Train").click()
    page.wait_for_timeout(1000)
    page.screenshot(path=out / "train-form.png", full_page=True)
    steps_box = page.get_by_label("steps", exact=True)
    steps_box.fill(str(steps))
    steps_box.press("Tab")
    page.get_by_label("validate_every", exact=True).fill("0")
    page.get_by_label("validate_every", exact=True).press("Tab")
    page.wait_for_function(f"document.querySelector('#job-cli').innerText.includes('--steps {steps}')",
                           timeout=60_000)
    page.locator("#job-cli").scroll_into_view_if_needed()
    page.screenshot(path=out / "train-cli-preview.png", full_page=True)
    log("CLI preview: " + page.locator("#job-cli").inner_text().replace("\n", " | "))
    page.get_by_role("button", name="Launch", exact=True).click()
    page.wait_for_function("document.querySelector('#job-check').innerText.includes('launched')", timeout=60_000)
    end = time.monotonic() + timeout_s
    while state(page) != ("running", state(page)[1]) or state(page)[1] < cancel_at:
        if time.monotonic() > end:
            raise TimeoutError(f"job did not reach step {cancel_at}: {state(page)}")
        page.wait_for_timeout(2000)
    page.wait_for_timeout(3000)  # the plot follows the summary
    page.screenshot(path=out / "train-running-loss-plot.png", full_page=True)
    log(f"running: {state(page)}")
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.wait_for_timeout(1500)
    log(f"right after cancel: {state(page)}")
    end = time.monotonic() + 300
    while state(page)[0] != "cancelled" and time.monotonic() < end:
        page.wait_for_timeout(2000)
    page.wait_for_timeout(2500)
    page.screenshot(path=out / "train-after-cancel.png", full_page=True)
    log(f"after cancel: {state(page)}; check pane: {page.locator('#job-check').inner_text()[:120]!r}")
    pick(page, "Preset (configs/*.toml)", "SSD-1B from SDXL (GPU; download SDXL and bring a data set first)")
    page.wait_for_function("document.querySelector('#job-check').innerText.includes('Not ready')", timeout=60_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=out / "train-gpu-preset-missing.png")
    log("GPU preset: " + page.locator("#job-check").inner_text()[:300].replace("\n", " | "))


def main(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log = lambda msg: print(f"[{time.monotonic() - started:6.1f} s] {msg}", flush=True)  # noqa: E731
    stages = {"layers": lambda page: layers(page, out, log, args.timeout),
              "sweep": lambda page: sweep_estimate(page, out, log, args.timeout),
              "train": lambda page: train(page, out, log, args.steps, args.cancel_at, args.timeout)}
    with sync_playwright() as p:
        page = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS).new_page(
            viewport={"width": 1400, "height": 1100})
        page.goto(args.url)
        for tab in args.tabs.split(","):
            stages[tab](page)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--out", default="docs/screenshots")
    parser.add_argument("--tabs", default="layers,sweep,train", help="stages to run, in order")
    parser.add_argument("--steps", type=int, default=60, help="steps of the demo job launched on the Train tab")
    parser.add_argument("--cancel-at", type=int, default=8, help="cancel once the job has done this many steps")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    main(parser.parse_args())
