"""Gradio front end: one module per tab, composed here. Only this package (and app.py) imports gradio."""
from __future__ import annotations

import os

import gradio as gr

from studio.jobs.runner import JobRunner, gpu_handover
from studio.loading import ModelCache
from studio.paths import data_dir
from studio.ui.arena_tab import build_arena_tab
from studio.ui.generate_tab import build_generate_tab, on_refresh_lists
from studio.ui.jobs_tab import build_jobs_tab
from studio.ui.layers_tab import build_layers_tab

INTRO = ("**SDXL-family studio** — generate with SDXL, SSD-1B, Vega and the embedded demo family side by side. "
         "The demo family runs offline on a CPU; real models load from the Hugging Face hub or a local folder.")


def build_app(cache: ModelCache | None = None) -> gr.Blocks:
    cache = cache or ModelCache()
    with gr.Blocks(title="SDXL-family studio") as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Generate") as generate:
            lists = build_generate_tab(cache)
        with gr.Tab("Layers"):
            build_layers_tab(cache)
        with gr.Tab("Train"):
            build_jobs_tab(runner=JobRunner(before_start=gpu_handover(cache)))  # a GPU job gets the GPU
        with gr.Tab("Arena"):
            build_arena_tab(cache)
        generate.select(on_refresh_lists, None, lists, api_name=False)  # a finished job's student/LoRA is listed
    return demo


def launch(demo: gr.Blocks, **kwargs):
    """Queue (one GPU job at a time per event) and serve; PNG outputs under the data dir are downloadable."""
    options = dict(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   allowed_paths=[str(data_dir())], max_file_size="20mb", show_error=True)
    options.update(kwargs)
    return demo.queue(max_size=64, default_concurrency_limit=1).launch(**options)
