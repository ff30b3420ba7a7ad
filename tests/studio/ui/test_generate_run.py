"""The Generate tab's runs through its real handler on tiny models (no browser): a failing model fails in its own
column while the others finish, cancel keeps the partial image and says where it stopped (also for a run still in
the queue), LoRAs go only where they fit, the model list marks models that are not on this machine, and the seed
box has nothing to reuse before a run."""
from __future__ import annotations

import threading
import time

import gradio as gr
import pytest

from studio.hosting import Hosting
from studio.loading import ModelCache
from studio.ui.generate_run import RunBoard, cancel_on_close, render
from studio.ui.generate_tab import GenerateHandlers, model_choices, on_reuse_seed

pytestmark = pytest.mark.usefixtures("one_thread")
REQUEST = dict(prompt="a red circle", negative_prompt="", seed=7, steps=3, guidance=5.0, scheduler="Euler",
               batch_size=1, width=0, height=0, init_image=None, strength=0.75)


def run_all(handlers, models, session="s", **overrides):
    """Every output the handler streams, and the run it reported on."""
    outputs = list(handlers.on_generate(models, **{**REQUEST, **overrides}, request=gr.Request(session_hash=session)))
    return outputs, handlers.board._active[session]


def images_of(gallery) -> list:
    return gallery.constructor_args.get("value") or []


@pytest.fixture(scope="module")
def handlers(family):
    return GenerateHandlers(ModelCache(), Hosting())  # local mode, whatever app another test built before


def test_a_failing_model_fails_in_its_own_column_and_the_others_finish(handlers):
    outputs, run = run_all(handlers, ["tiny-base", "vega", "tiny-student"])  # vega: not in the (offline) cache
    *galleries, stats, files, seed = outputs[-1]
    assert [len(images_of(g)) for g in galleries[:3]] == [1, 0, 1] and not galleries[3].visible
    assert "vega: failed" in galleries[1].label and seed == 7 and len(files) == 2
    assert [c.state for c in run.columns] == ["done", "failed", "done"]
    assert run.columns[1].detail.startswith("model 'vega'")  # the model that was picked, not its base sdxl
    assert [row[0] for row in stats] == ["tiny-base", "vega", "tiny-student"]
    assert stats[1][9] == "failed: weights not on this machine" and stats[2][2] > 0  # short: the table stays legible
    status, *headers = render(run)
    assert status == "Done: 2 of 3 models; failed: vega (see its column)."
    assert "failed" in headers[1] and "model &#x27;vega&#x27;" in headers[1] and "done" in headers[0]
    assert outputs[0][-3] == [] and not any(images_of(g) for g in outputs[0][:4])  # first: all empty
    assert [len(images_of(g)) for g in outputs[1][:3]] == [1, 0, 0]  # then each column as soon as it is done


def test_cancel_keeps_the_partial_image_and_says_at_which_step(handlers):
    board = handlers.board

    def cancel_at_step_two():
        deadline = time.time() + 120
        while time.time() < deadline:
            run = board._active.get("c")
            col = run.column("tiny-student") if run is not None else None
            if col is not None and col.step >= 2 and col.phase != "warm-up":
                board.cancel("c")
                return
            time.sleep(0.005)

    canceller = threading.Thread(target=cancel_at_step_two)
    canceller.start()
    outputs, run = run_all(handlers, ["tiny-base", "tiny-student"], session="c", steps=40)
    canceller.join()
    *galleries, stats, files, seed = outputs[-1]
    step = run.columns[1].step
    assert run.message == f"Stopped tiny-student: cancelled at step {step}/40" and 2 <= step < 40
    assert run.columns[1].state == "cancelled" and "partial image below (not saved)" in run.columns[1].detail
    (partial,) = images_of(galleries[1])
    assert galleries[1].label.startswith("partial: tiny-student") and partial[1].startswith("partial, not saved")
    assert len(images_of(galleries[0])) == 1 and len(files) == 1  # the finished column stays; the partial is unsaved
    assert stats[1][9] == f"cancelled at step {step}/40"


def test_a_cancel_while_queued_stops_the_run_before_it_starts(handlers):
    board = handlers.board
    token = board.queue("q")
    assert board.cancel("q") == "Cancelled before it started."
    outputs, run = run_all(handlers, ["tiny-base"], session="q")
    assert board.get(token) is run and run.state == "cancelled" and not run.columns
    assert len(outputs) == 1 and all(isinstance(o, type(gr.skip())) for o in outputs[0])  # last images stay
    assert board.cancel("q") == "Nothing is running."


def test_closing_the_tab_stops_its_generations_and_no_one_elses():
    demo = gr.Blocks()
    with demo:
        on_close = cancel_on_close(board := RunBoard())
    assert [f.fn for f in demo.fns.values() if any(t[1] == "unload" for t in f.targets)] == [on_close]
    mine, other = board.queue("closed"), board.queue("open")
    running = board.start("closed")
    queued = board.get(board.queue("closed"))
    on_close(gr.Request(session_hash="closed"))
    assert running.stop.is_set() and queued.finished and queued.state == "cancelled"
    assert board.get(mine) is running and not board.get(other).stop.is_set()  # another tab's run goes on
    on_close(gr.Request(session_hash=None))  # no session: nothing to stop
    assert not board.get(other).stop.is_set()


def test_lora_goes_only_on_models_it_fits_and_is_named(handlers):
    from studio.paths import DEMO_DIR

    lora = str(DEMO_DIR / "loras" / "demo-teacher-orange.safetensors")
    outputs, run = run_all(handlers, ["demo-teacher", "demo-vega"], session="l", steps=2, lora=lora)
    *galleries, stats, files, seed = outputs[-1]
    assert [row[10] for row in stats] == ["demo-teacher-orange ×1", ""]  # the stats' LoRA column
    assert images_of(galleries[0])[0][1] == "seed 7 · demo-teacher-orange ×1" and images_of(galleries[1])[0][1] == "seed 7"
    teacher, vega = run.columns
    assert teacher.lora == "LoRA demo-teacher-orange ×1" and not teacher.lora_warning
    assert vega.lora_warning and vega.lora.startswith("LoRA not applied. LoRA demo-teacher-orange was made for "
                                                      "demo-teacher")
    assert "python -m training.lora demo port --lora assets/demo/loras/demo-teacher-orange.safetensors " \
           "--student demo-vega" in vega.lora


def test_the_model_list_marks_models_that_are_not_on_this_machine(family):
    choices = dict((value, label) for label, value in model_choices())
    assert choices["tiny-base"] == "tiny-base" and choices["demo-teacher"] == "demo-teacher"
    assert choices["sdxl"] == "sdxl (download needed)" and choices["ssd-1b"] == "ssd-1b (download needed)"


def test_reuse_seed_before_any_run_changes_nothing():
    assert isinstance(on_reuse_seed(None), type(gr.skip())) and on_reuse_seed(1234) == 1234


def test_a_flood_of_clicks_holds_a_bounded_number_of_runs():
    from studio.ui.generate_run import MAX_QUEUED

    board = RunBoard()
    tokens = [board.queue("flood") for _ in range(MAX_QUEUED + 5)]
    assert len(board._queued["flood"]) == MAX_QUEUED
    assert board.get(tokens[0]).finished and "too many" in board.get(tokens[0]).message
    assert not board.get(tokens[-1]).finished


def test_the_watcher_follows_its_run_until_it_ends():
    import asyncio

    from studio.ui.generate_run import Column, watch

    board = RunBoard()
    token = board.queue("w")
    seen = []

    async def follow():
        async for shown in watch(board, token):
            seen.append(shown)

    def work():
        time.sleep(0.3)
        run = board.start("w")
        run.columns = [Column("m1"), Column("m2")]
        run.on_step(1, 4, {"model": "m1"})
        time.sleep(0.3)
        run.finish_column("m1", "done", "1 image(s)")
        run.finish("done", "Done: 1 of 2 models.")

    threading.Thread(target=work).start()
    # a thread of its own: the browser tests' Playwright session keeps an event loop running in the main thread
    watcher = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(follow(), 10)))
    watcher.start()
    watcher.join(15)
    assert seen[0][0].startswith("Queued") and seen[-1][0] == "Done: 1 of 2 models."
    assert any("step 1/4" in s[1] and 'width:25%' in s[1] for s in seen)
    assert "not run" in seen[-1][2]  # m2 never ran: marked, not left "waiting"


def test_the_final_line_is_written_only_once_the_run_has_finished():
    from studio.ui.generate_run import Column, finished_view

    board = RunBoard()
    token = board.queue("f")
    run = board.start("f")
    run.columns = [Column("m1")]
    run.on_step(1, 4, {"model": "m1"})
    assert all(isinstance(part, type(gr.skip())) for part in finished_view(board.get(token)))  # running: untouched
    board.cancel("f")
    run.finish("cancelled", "Stopped m1: cancelled at step 1/4")
    shown = finished_view(board.get(token))
    assert shown == render(run) and shown[0] == "Stopped m1: cancelled at step 1/4"
    assert all(isinstance(part, type(gr.skip())) for part in finished_view(None))  # a forgotten run: untouched
