"""Drive the running app in headless Chromium and save screenshots (used for the README and to look at the UI).

    python app.py &            # or any URL
    pip install playwright     # the Python driver only; it uses the system Chromium (Debian: apt install chromium)
    python scripts/screenshot.py --url http://127.0.0.1:7860 --models demo-teacher --out docs/generate-tab.png
    python scripts/screenshot.py --models demo-teacher demo-sr --condition picture.png --out docs/generate-sr.png
"""
from __future__ import annotations

import argparse

from playwright.sync_api import sync_playwright

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pick_models_and_generate(page, models: list[str], prompt: str, timeout_s: float, condition: str = "") -> None:
    """On the Generate tab: type the prompt, choose ``models`` (in order), upload the ``condition`` image (shown for
    conditional models), click Generate, wait for every column."""
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.locator("div.token-remove.remove-all").first.click()  # clear the preselected default model
    dropdown = page.get_by_label("Models (up to")
    for model in models:
        dropdown.click()
        page.get_by_role("option", name=model, exact=True).click()
    page.keyboard.press("Escape")
    if condition:
        page.locator("#gen-condition input[type=file]").set_input_files(condition)
        page.wait_for_selector("#gen-condition img", timeout=30_000)
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function(f"document.querySelectorAll('#gallery-{len(models) - 1} img').length > 0",
                           timeout=timeout_s * 1000)
    page.wait_for_timeout(1500)


def generate_and_capture(url: str, models: list[str], prompt: str, out: str, timeout_s: float,
                         chromium: str, condition: str = "") -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(url)
        pick_models_and_generate(page, models, prompt, timeout_s, condition)
        page.screenshot(path=out, full_page=True)
        browser.close()
    print(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--models", nargs="+", default=["demo-teacher"])
    parser.add_argument("--prompt", default="a red circle on a blue background")
    parser.add_argument("--out", default="docs/generate-tab.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--condition", default="", help="condition image to upload (conditional models)")
    args = parser.parse_args()
    generate_and_capture(args.url, args.models, args.prompt, args.out, args.timeout, args.chromium, args.condition)
