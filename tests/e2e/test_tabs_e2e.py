"""The Generate, Layers and Train tabs in a real browser. Local mode: two demo models side by side, a recipe compared
in Layers, the tiny demo distillation launched, watched to its first steps and cancelled. Public mode: the Train tab
is locked for an anonymous visitor, and the /jobs_* API refuses one (and starts nothing)."""
from __future__ import annotations

import json
import re

import pytest
from gradio_client import Client

from studio.jobs import preset_config
from tests.e2e.conftest import shot

DEMO_PRESET = "distill-demo-vega-5min"
SLOW_MS = 240_000  # first use of a model: loading it too, on a busy 2-core machine


def test_local_generate_side_by_side(local_studio, page):
    page.goto(local_studio.url)
    page.get_by_label("Prompt", exact=True).fill("a yellow star on a blue background")
    dropdown = page.get_by_label("Models (up to")
    dropdown.click()
    page.get_by_role("option", name="demo-ssd", exact=True).click()
    page.keyboard.press("Escape")
    steps = page.locator("input[aria-label='number input for Steps']:visible").first
    steps.fill("4")
    steps.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#gallery-1 img").first.wait_for(timeout=SLOW_MS)
    page.locator("#gallery-0 img").first.wait_for()
    seed = page.get_by_label("Seed used")
    page.wait_for_function("(el) => /^\\d+$/.test(el.value)", arg=seed.element_handle(), timeout=SLOW_MS)
    assert "demo-teacher" in page.locator("#gallery-0").inner_text()  # one column per model, the same seed
    assert "demo-ssd" in page.locator("#gallery-1").inner_text()
    page.get_by_text(f"demo-ssd-{seed.input_value()}").first.wait_for()  # its PNG (with parameters) to download
    shot(page, "generated")


def test_local_layers_compare_a_recipe(local_studio, page):
    page.goto(local_studio.url)
    page.get_by_role("tab", name="Layers").click()
    page.get_by_label("Recipe: ticks its units").click()
    page.get_by_role("option", name="vega", exact=True).click()
    page.get_by_text("Removing all ticked units together").or_(page.get_by_text("Config-expressible")).first.wait_for()
    steps = page.locator("input[aria-label='number input for Steps']:visible").first
    steps.fill("4")
    steps.press("Enter")
    page.get_by_role("button", name="Compare full vs ablated").click()
    page.locator("#layers-full img").first.wait_for(timeout=SLOW_MS)
    page.locator("#layers-ablated img").first.wait_for()
    page.get_by_text("SSIM to full image").first.wait_for()
    page.get_by_text(re.compile(r"^damage 0\.\d+$")).first.wait_for()  # the ablated image differs from the full one
    shot(page, "compared")
    assert page.get_by_text(re.compile(r"plan \(config\), 47 units removed")).count() >= 1  # the vega recipe


def summary_state(page) -> tuple[str, int]:
    match = re.search(r"(queued|running|finished|failed|cancelled) · step (\d+)/", page.locator("#job-summary")
                      .inner_text())
    return (match[1], int(match[2])) if match else ("", 0)


def wait_state(page, pattern: str, timeout_s: float) -> tuple[str, int]:
    """Wait until the selected job's summary matches ``pattern`` (a JS regular expression); its (status, step)."""
    page.wait_for_function("(p) => new RegExp(p).test(document.querySelector('#job-summary').innerText)",
                           arg=pattern, timeout=timeout_s * 1000)
    return summary_state(page)


def test_local_launch_the_demo_job_watch_progress_and_cancel(local_studio, page):
    """The tiny demo distillation (the default preset made smaller in the JSON editor, as a user would): launched,
    seen running past its first steps (summary and loss plot), cancelled."""
    kind, config = preset_config(DEMO_PRESET)
    config |= dict(dataset_count=16, batch_size=2, steps=200, validate_every=0, checkpoint_every=0)
    page.goto(local_studio.url)
    page.get_by_role("tab", name="Train").click()
    page.get_by_text("Advanced: every field as JSON").click()  # the form covers the common fields; JSON has all
    editor = page.locator("#job-config .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(json.dumps(config, indent=1))
    page.get_by_role("button", name="Check", exact=True).click()
    page.wait_for_function("document.querySelector('#job-check').innerText.includes('200 steps, batch 2')")
    page.locator("#job-launch").click()
    page.wait_for_function("document.querySelector('#job-check').innerText.includes('launched')")
    wait_state(page, r"running · step ([2-9]|\d\d+)/", 240)  # past its first steps
    page.locator("#loss-plot canvas, #loss-plot svg").first.wait_for()
    shot(page, "running")
    page.locator("#job-cancel").click()
    status, step = wait_state(page, r"cancelled · step", 120)
    assert 2 <= step < 200
    shot(page, "cancelled")


def test_public_train_tab_is_locked_and_the_jobs_api_refuses_anonymous_callers(public_studio, page):
    page.goto(public_studio.url)
    page.get_by_role("tab", name="Train").click()
    lock = page.locator("#train-lock")
    lock.get_by_text("Training is for admins").wait_for()
    assert "STUDIO_ADMIN_PASSWORD" in lock.inner_text()  # how to become one
    for button in ("#job-launch", "#job-cancel", "#job-resume", "#job-delete"):
        assert page.locator(button).is_disabled(), button
    shot(page, "locked")
    jobs = public_studio.data_dir / "jobs"
    before = sorted(jobs.iterdir()) if jobs.exists() else []
    kind, config = preset_config(DEMO_PRESET)
    client = Client(public_studio.url, verbose=False)
    with pytest.raises(Exception, match="Starting a training job is for admins only"):
        client.predict(kind, json.dumps(config), "mine", api_name="/jobs_submit")
    for action in ("cancel", "resume", "delete"):
        with pytest.raises(Exception, match="not in the list of choices|for the visitor who started it or an admin"):
            client.predict("20260101-000000-distill", api_name=f"/jobs_{action}")
    assert (sorted(jobs.iterdir()) if jobs.exists() else []) == before
    page.get_by_role("button", name="↻ jobs").click()
    page.wait_for_timeout(500)
    assert "distill" not in page.locator("#jobs-table").inner_text()  # nothing was queued
