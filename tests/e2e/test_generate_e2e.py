"""The Generate tab in a real browser, as a newcomer meets it: three models each fill their own column (progress,
then images), a model that is not on this machine fails in its own column beside one that works, a teacher's LoRA
is kept off a student with a warning that offers the port command, a few-step model runs with its own card beside
the teacher, and Cancel says where it stopped."""
from __future__ import annotations

import os

from tests.e2e.conftest import shot

STEPS = int(os.environ.get("STUDIO_E2E_STEPS", "2"))  # demo models at 64 px: seconds per model on a CPU (the
# README's screenshots: STUDIO_E2E_STEPS=20, the demo family's default, where the shapes are drawn)
WAIT_S = 120 * max(1, STEPS // 4)


def open_generate(page, url: str, models: list[str], labels: dict | None = None, steps: int = STEPS) -> None:
    page.goto(url)
    page.locator("#gen-go").wait_for()
    assert "Start here:" in page.locator(".studio-first-step").first.inner_text()
    page.locator("div.token-remove.remove-all").first.click()  # clear the preselected default model
    dropdown = page.get_by_label("Models (up to")
    for model in models:
        dropdown.click()
        page.get_by_role("option", name=(labels or {}).get(model, model), exact=True).click()
    page.keyboard.press("Escape")
    page.wait_for_function("(n) => document.querySelectorAll('#gen-col-' + (n - 1)).length > 0 && "
                           "document.querySelector('#gen-col-' + (n - 1)).offsetParent !== null", arg=len(models))
    set_steps(page, steps)


def set_steps(page, steps: int, tries: int = 20) -> None:
    """Type ``steps`` into the Steps box until it stays: each model added re-applies the registry defaults when its
    event gets through (late on a loaded machine), which can overwrite a value typed too early."""
    box = page.get_by_label("number input for Steps")
    kept = 0
    for _ in range(tries):
        if box.input_value() != str(steps):
            box.fill(str(steps))
            box.press("Enter")
            kept = 0
        page.wait_for_timeout(1000)
        kept = kept + 1 if box.input_value() == str(steps) else 0
        if kept == 2:  # unchanged for two seconds
            return
    raise AssertionError(f"the Steps box did not keep {steps}: {box.input_value()}")


def column(page, i: int) -> str:
    return page.locator(f"#gen-col-{i}").inner_text()


def wait_running(page, i: int, timeout_s: float = WAIT_S) -> None:
    """Until column ``i`` shows its progress ("step k/n"), whatever k: the header follows the run by polling
    (``generate_run.POLL_S``), so on a quiet machine a warm model's steps pass faster than it and one given step may
    never be shown (waiting for "step 3/150" was why the cancel test sometimes never clicked Cancel)."""
    page.wait_for_function("(i) => /step \\d+\\//.test((document.querySelector('#gen-col-' + i) || {innerText: ''})"
                           ".innerText)", arg=i, timeout=timeout_s * 1000)


# the status line's text, without Gradio's status tracker beside it (it can flash a timer such as "0.1s" while an
# event writing the line runs, even with show_progress="hidden")
STATUS = "#gen-status [data-testid=markdown]"


def wait_status(page, text: str, timeout_s: float = WAIT_S) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s).innerText.includes(t)", arg=[STATUS, text],
                           timeout=timeout_s * 1000)


def images(page, i: int) -> int:
    return page.locator(f"#gallery-{i} img").count()


def test_three_models_each_show_their_own_progress_then_images(local_studio, page):
    open_generate(page, local_studio.url, ["demo-teacher", "demo-ssd", "demo-vega"])
    assert not page.locator("#gen-seed-used").is_visible()  # nothing to reuse before a run
    page.locator("#gen-go").click()
    page.wait_for_function("['running', 'done'].some((t) => (document.querySelector('#gen-col-2') || "
                           "{innerText: ''}).innerText.includes(t))", timeout=WAIT_S * 1000)  # 2 steps: may be over
    during = [column(page, i) for i in range(3)]  # the models run in turn: the first two are done by now
    assert "done" in during[0] and "done" in during[1]
    page.wait_for_function("document.querySelectorAll('#gallery-0 img').length == 1 && "
                           "document.querySelectorAll('#gallery-1 img').length == 1")  # each column its own images
    if "running" in column(page, 2):  # 2 steps may already be over on a quiet machine
        assert images(page, 2) == 0 and "running" not in column(page, 0)  # no copies of one progress bar
        shot(page, "during")
    wait_status(page, "Done: 3 of 3 models.")
    page.wait_for_function("document.querySelectorAll('#gallery-2 img').length > 0")
    assert all("done" in column(page, i) for i in range(3))
    assert page.locator("#gen-seed-used").is_visible()
    shot(page, "after")


def test_a_model_that_is_not_here_fails_in_its_own_column(local_studio, page):
    open_generate(page, local_studio.url, ["demo-teacher", "ssd-1b"], {"ssd-1b": "ssd-1b (download needed)"})
    page.locator("#gen-go").click()
    wait_status(page, "Done: 1 of 2 models; failed: ssd-1b")
    assert "failed" in column(page, 1) and "model 'ssd-1b'" in column(page, 1)
    assert "done" in column(page, 0) and images(page, 0) == 1
    shot(page, "failed")


def test_a_teacher_lora_is_kept_off_a_student_with_the_port_command(local_studio, page):
    open_generate(page, local_studio.url, ["demo-teacher", "demo-vega"])
    page.get_by_text("LoRA", exact=True).first.click()  # the accordion
    page.get_by_label("LoRA", exact=True).click()
    page.get_by_role("option", name="demo-teacher-orange (demo)").click()
    page.keyboard.press("Escape")
    page.locator("#gen-go").click()
    wait_status(page, "Done: 2 of 2 models.")
    assert "LoRA demo-teacher-orange ×1" in column(page, 0)
    vega = column(page, 1)
    assert "LoRA not applied" in vega and "python -m training.lora demo port" in vega and "--student demo-vega" in vega
    assert "demo-teacher-orange" in page.locator("#gallery-0").inner_text()  # named in the caption
    shot(page, "lora-mismatch")


def test_a_few_step_model_beside_the_teacher_runs_with_its_own_card(local_studio, page):
    open_generate(page, local_studio.url, ["demo-teacher", "demo-lcm"], steps=20)  # the teacher's default
    assert "Few-step models run with their own card: demo-lcm: TCD, 4 steps" in page.locator("#gen-defaults").inner_text()
    page.locator("#gen-go").click()
    wait_status(page, "Done: 2 of 2 models.", timeout_s=max(WAIT_S, 600))  # 20 + 4 steps
    page.wait_for_function("document.querySelectorAll('#gallery-1 img').length > 0")
    assert "Euler, 20 steps" in column(page, 0) and "TCD, 4 steps" in column(page, 1)
    shot(page, "fewstep")


def test_cancel_says_where_it_stopped_and_keeps_the_partial_image(local_studio, page):
    open_generate(page, local_studio.url, ["demo-teacher"], steps=150)
    page.locator("#gen-go").click()
    wait_running(page, 0)
    page.locator("#gen-cancel").click()
    wait_status(page, "cancelled at step")
    status = page.locator(STATUS).inner_text().strip()
    assert status.startswith("Stopped demo-teacher: cancelled at step ") and status.endswith("/150")
    assert int(status.split("step ")[1].split("/")[0]) < 150  # it stopped: the run did not go to the end
    assert "cancelled" in column(page, 0) and "partial image below (not saved)" in column(page, 0)
    page.wait_for_function("document.querySelectorAll('#gallery-0 img').length > 0")
    assert "partial" in page.locator("#gallery-0").inner_text()
    shot(page, "cancelled")
