"""Per-visitor fairness in Gradio's queue: one visitor holds at most ``caps.pending`` events waiting or running in the
heavy lanes (gpu, sweep, arena), so 70 joins from one client cannot fill the queue (``caps.queue_size``) for
everyone else. Admins (everyone, in local mode) are not limited.

    demo.queue(max_size=caps.queue_size, ...)
    limit_pending_per_visitor(demo, hosting)

Gradio 6 has a queue-wide ``max_size`` and per-lane ``concurrency_limit`` but nothing per client, so this wraps the
queue's ``push`` (what ``/gradio_api/queue/join`` and ``/gradio_api/call/<api_name>`` both go through): a join over the
limit gets HTTP 503 with a message naming the cap and its variable, like Gradio's own "queue is full". The visitor is
the server-side identity of `studio.ui.access` (address as the Spaces proxy saw it, or the signed-in user), never the
client-chosen session hash.
"""
from __future__ import annotations

import asyncio

import gradio as gr

from studio.hosting import CAP_ENV, HEAVY_LANES, Hosting
from studio.ui.access import raw_visitor


def pending_events(queue) -> list:
    """Events waiting in or running from the heavy lanes of a Gradio ``Queue``."""
    waiting = [e for lane in HEAVY_LANES if lane in queue.event_queue_per_concurrency_id
               for e in queue.event_queue_per_concurrency_id[lane].queue]
    running = [e for job in queue.active_jobs if job for e in job if e.concurrency_id in HEAVY_LANES]
    return waiting + running


def limit_pending_per_visitor(demo: gr.Blocks, hosting: Hosting) -> None:
    """Refuse a visitor's join into a heavy lane while it already has ``hosting.caps.pending`` events there."""
    queue = demo._queue
    push = queue.push
    cap = hosting.caps.pending

    lock = asyncio.Lock()  # count and enqueue as one step: simultaneous joins cannot all pass the count

    async def limited_push(body, request, username):
        fn = demo.fns.get(body.fn_index) if body.fn_index is not None else None
        who = raw_visitor(request, username, hosting)
        if fn is None or fn.concurrency_id not in HEAVY_LANES or who.admin:
            return await push(body=body, request=request, username=username)
        async with lock:
            mine = sum(1 for e in pending_events(queue) if raw_visitor(e.request, e.username, hosting).key == who.key)
            if mine >= cap:
                return (False, f"You already have {mine} request(s) waiting or running (generation, battles, sweeps); "
                               f"this server takes at most {cap} per visitor ({CAP_ENV['pending'][0]}). Wait for them "
                               "to finish.", "queue_full")
            return await push(body=body, request=request, username=username)

    queue.push = limited_push
