"""Live state of the Generate tab's runs: each model column's own progress, result, error and LoRA note, and the
status line next to the Cancel button — shown by a watcher event, so the /generate API's outputs stay as they are.

    token = board.queue(session)               # on the click, before /generate is queued (the watcher follows it)
    run = board.start(session, ["demo-teacher", "demo-vega"], notes)   # /generate takes the oldest queued token
    run.on_step(3, 20, {"model": "demo-vega"}) # from the generation callback
    async for status, *headers in watch(board, token): ...

A click queues a token; /generate pops the session's oldest token when the GPU lane runs it, so a Cancel pressed
while it waits in the queue stops it before it starts. API callers of /generate get a run no watcher follows.
"""
from __future__ import annotations

import asyncio
import html
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import gradio as gr
from gradio.context import Context
from PIL import Image

from studio import hosting as hosting_mod
from studio.compare import MAX_MODELS, lora_label, stats_rows
from studio.generation import GenerateResult

DISPLAY_PX, MAX_ZOOM = 384, 4  # small images are shown enlarged (whole-number zoom, nearest neighbour) up to this
POLL_S = 0.25  # how often the watcher looks at a run
KEEP_S = 3600  # finished runs are forgotten after this long (unfinished ones after 6 × this)
MAX_QUEUED = 8  # queued clicks per browser session; older ones are dropped (a flood of clicks holds no memory)
CSS = """
.gen-col {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px 10px; min-height: 64px;}
.gen-col-title {display: flex; justify-content: space-between; gap: 8px; font-weight: 600;}
.gen-badge {font-size: 12px; font-weight: 600; padding: 1px 8px; border-radius: 10px; background: #e5e7eb;
  color: #374151; white-space: nowrap;}
.gen-running .gen-badge {background: #dbeafe; color: #1e40af;} .gen-done .gen-badge {background: #dcfce7; color: #166534;}
.gen-failed .gen-badge {background: #fee2e2; color: #991b1b;}
.gen-cancelled .gen-badge {background: #fef3c7; color: #92400e;}
.gen-bar {height: 6px; background: #e5e7eb; border-radius: 3px; margin: 6px 0 4px; overflow: hidden;}
.gen-bar > div {height: 100%; background: #3b82f6;}
.gen-detail {font-size: 13px; overflow-wrap: anywhere;}
.gen-failed .gen-detail {color: #991b1b;}
.gen-lora {font-size: 12px; margin-top: 4px; overflow-wrap: anywhere;}
.gen-lora.gen-warn {color: #92400e; background: #fffbeb; border-radius: 4px; padding: 2px 6px;}
.gen-column {max-width: 560px;}
#gen-status {min-height: 0;} #gen-status p {margin: 0; font-weight: 600;}
"""
BADGES = {"waiting": "waiting", "running": "running", "done": "done", "failed": "failed",
          "cancelled": "cancelled", "skipped": "not run"}


@dataclass
class Column:
    model: str
    state: str = "waiting"  # one of BADGES
    step: int = 0
    total: int = 0
    phase: str = ""  # "warm-up" while the untimed first call after loading runs
    detail: str = ""  # the error, or what was made
    lora: str = ""  # what happened to the LoRA on this model
    lora_warning: bool = False


@dataclass
class Run:
    columns: list[Column] = field(default_factory=list)
    state: str = "queued"  # queued, running, done, cancelled, failed
    message: str = ""  # the final line next to the Cancel button
    stop: threading.Event = field(default_factory=threading.Event)
    finished_at: float | None = None
    started_at: float | None = None
    created_at: float = field(default_factory=time.time)

    def column(self, model: str) -> Column | None:
        return next((c for c in self.columns if c.model == model), None)

    def on_step(self, step: int, total: int, info: dict) -> None:
        """The generation callback: the column of ``info["model"]`` runs at ``step`` of ``total``."""
        col = self.column(info.get("model", ""))
        if col is not None:
            col.state, col.step, col.total, col.phase = "running", step, total, info.get("phase", "")

    def finish_column(self, model: str, state: str, detail: str) -> None:
        col = self.column(model)
        if col is not None:
            col.state, col.detail, col.phase = state, detail, ""

    def finish(self, state: str, message: str) -> None:
        if self.finished_at is None:
            for col in self.columns:
                if col.state in ("waiting", "running"):
                    col.state = "skipped"
            self.state, self.message, self.finished_at = state, message, time.time()

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


class RunBoard:
    """Runs by token, and each browser session's queued tokens (oldest first)."""

    def __init__(self):
        self._runs: dict[str, Run] = {}
        self._queued: dict[str, deque[str]] = {}
        self._active: dict[str, Run] = {}
        self._lock = threading.Lock()

    def queue(self, session: str) -> str:
        with self._lock:
            self._prune()
            token = secrets.token_hex(8)
            self._runs[token] = Run()
            queued = self._queued.setdefault(session, deque())
            queued.append(token)
            while len(queued) > MAX_QUEUED:
                dropped = self._runs.get(queued.popleft())
                if dropped is not None:
                    dropped.stop.set()
                    dropped.finish("cancelled", "Dropped: too many generations queued at once.")
            return token

    def start(self, session: str) -> Run:
        """The run of the session's oldest queued token (a fresh one for API callers), now the session's active."""
        with self._lock:
            tokens = self._queued.get(session)
            run = self._runs[tokens.popleft()] if tokens else Run()
            if not run.finished:  # a run cancelled in the queue stays cancelled
                run.state, run.started_at = "running", time.time()
            self._active[session] = run
            return run

    def get(self, token: str | None) -> Run | None:
        return self._runs.get(token or "")

    def cancel(self, session: str) -> str:
        """Stop the session's running generation after its current step, and every one it has queued."""
        with self._lock:  # queued tokens stay queued: /generate pops each and finds it cancelled
            active = self._active.get(session)
            queued = [self._runs[t] for t in self._queued.get(session, ()) if not self._runs[t].finished]
        for run in queued:
            run.stop.set()
            run.finish("cancelled", "Cancelled before it started.")
        if active is not None and not active.finished:
            active.stop.set()
            return "Cancelling after the current step…"
        return "Cancelled before it started." if queued else "Nothing is running."

    def _prune(self) -> None:
        now = time.time()
        for token in [t for t, r in self._runs.items() if (r.finished_at or now) < now - KEEP_S
                      or r.created_at < now - 6 * KEEP_S]:
            del self._runs[token]
        live = set(map(id, self._runs.values()))
        self._active = {s: r for s, r in self._active.items() if id(r) in live}
        self._queued = {s: d for s, d in ((s, deque(t for t in d if t in self._runs)) for s, d in self._queued.items())
                        if d}


def cancel_on_close(board: RunBoard):
    """Register (on the Blocks being built) and return the handler that stops a session's generations when its tab
    is closed or reloaded: the GPU lane does not go on running for nobody, and the next click does not queue
    behind it."""
    def on_close(request: gr.Request) -> None:
        if request.session_hash:  # Gradio's unload: the tab's heartbeat stopped
            board.cancel(request.session_hash)

    if Context.root_block is not None:
        Context.root_block.unload(on_close)
    return on_close


def cancel_message(model: str, step: int, total: int) -> str:
    return f"Stopped {model}: cancelled at step {step}/{total}"


def _text(text: str) -> str:
    text = hosting_mod.redact(text) if hosting_mod.current().public else text
    return html.escape(text)


def _code(text: str) -> str:
    """Escaped text whose `backticked` parts become <code>."""
    parts = _text(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def column_html(col: Column | None) -> str:
    if col is None:
        return ""
    detail = col.detail
    bar = ""
    if col.state == "running":
        what = "warm-up (untimed first call)" if col.phase == "warm-up" else "step"
        detail = f"{what} {col.step}/{col.total}"
        bar = f'<div class="gen-bar"><div style="width:{100 * col.step / max(col.total, 1):.0f}%"></div></div>'
    elif col.state == "waiting":
        detail = "waits for the models before it"
    lora = ""
    if col.lora:
        lora = f'<div class="gen-lora{" gen-warn" if col.lora_warning else ""}">{_code(col.lora)}</div>'
    return (f'<div class="gen-col gen-{col.state}"><div class="gen-col-title"><span>{html.escape(col.model)}</span>'
            f'<span class="gen-badge">{BADGES[col.state]}</span></div>{bar}'
            f'<div class="gen-detail">{_code(detail)}</div>{lora}</div>')


def status_text(run: Run | None) -> str:
    if run is None:
        return ""
    if run.finished:
        return run.message
    if run.state == "queued":
        return "Queued: waiting for the generations before it…"
    if run.stop.is_set():
        return "Cancelling after the current step…"
    current = next((i for i, c in enumerate(run.columns) if c.state == "running"), None)
    if current is None:
        return "Loading…"
    return f"Running {run.columns[current].model} (model {current + 1} of {len(run.columns)})…"


def render(run: Run | None) -> tuple:
    """(status line, one header per column slot)."""
    columns = run.columns if run is not None else []
    return (status_text(run), *[column_html(columns[i] if i < len(columns) else None) for i in range(MAX_MODELS)])


def finished_view(run: Run | None) -> tuple:
    """``render`` of a finished run, nothing (skips) for one still running: the final line written once more after
    the run's event ends and after a cancel's reply, so neither the watcher's last update nor a "Cancelling…" reply
    arriving late can leave a stale line."""
    return render(run) if run is not None and run.finished else tuple(gr.skip() for _ in range(1 + MAX_MODELS))


async def watch(board: RunBoard, token: str | None, max_s: float = 6 * 3600):
    """Yield `render` of the token's run whenever it changes, until the run finishes."""
    last, deadline = None, time.monotonic() + max_s
    while time.monotonic() < deadline:
        run = board.get(token)
        shown = render(run)
        if shown != last:
            last = shown
            yield shown
        if run is None or run.finished:
            return
        await asyncio.sleep(POLL_S)


# ---------------------------------------------------------------------------------------------------------------
# the /generate outputs: one gallery per column, the stats, the files, the seed


def display_image(image: Image.Image) -> tuple[Image.Image, int]:
    """A small image enlarged by a whole number (≤ MAX_ZOOM, nearest neighbour: pixels stay sharp) toward
    DISPLAY_PX; large ones unchanged (the gallery fits them to the column). Returns (image, zoom)."""
    zoom = max(1, min(MAX_ZOOM, DISPLAY_PX // max(image.size)))
    if zoom == 1:
        return image, 1
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST), zoom


def made_text(result: GenerateResult) -> str:
    """What the column made and how: a few-step model beside its teacher shows its own sampler and steps."""
    s, im, req = result.stats, result.images[0], result.request
    return (f"{req.scheduler}, {req.steps} steps, CFG {req.guidance:g} · {len(result.images)} image(s), "
            f"{im.width}×{im.height}, {s.latency_s:.2f} s · seed {result.seed}")


def run_outputs(models: list[str], results: list[GenerateResult], files: list[str], seed: int):
    galleries = []
    for i in range(MAX_MODELS):
        if i >= len(models):
            galleries.append(gr.Gallery(value=None, label="", visible=False))
            continue
        r = results[i] if i < len(results) else None
        if r is None or not r.images:
            label = models[i] if r is None else f"{r.model}: failed (the reason is above)"
            galleries.append(gr.Gallery(value=None, label=label, visible=True))
            continue
        shown, lora = [], lora_label(r.loras)
        for j, im in enumerate(r.images):
            big, zoom = display_image(im)
            caption = f"seed {r.seed + j}" + (f" · {lora}" if lora else "")  # the seed first: never the part cut off
            shown.append((big, ("partial, not saved · " if r.cancelled else "") + caption))
        zoom_note = f" · {r.images[0].width}×{r.images[0].height}" + (f" shown at {zoom}×" if zoom > 1 else "")
        galleries.append(gr.Gallery(value=shown, label=("partial: " if r.cancelled else "") + r.model + zoom_note,
                                    visible=True, columns=min(len(shown), 2)))
    return (*galleries, stats_rows(results), files, seed)
