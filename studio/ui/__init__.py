"""Gradio front end: one module per tab, composed here. Only this package (and app.py) imports gradio.

    demo = build_app(hosting=Hosting.from_env(public=True))
    launch(demo)                       # queue size, concurrency, served files, admin sign-in, MCP from the hosting

Served files: nothing is in ``allowed_paths``, so ``/gradio_api/file=`` serves only Gradio's own upload and cache
folders (images and files a handler returned to its caller are copied there); ``blocked_paths`` adds the private
folders of the data dir and the persistent dir (votes, battle images, generated PNGs, exported weights) on top.
"""
from __future__ import annotations

import logging
import os

import gradio as gr
from gradio.utils import get_cache_folder, is_in_or_equal
from PIL import Image

from studio import hosting as hosting_mod
from studio.hosting import Hosting
from studio.jobs.runner import JobRunner, gpu_handover
from studio.loading import ModelCache
from studio.paths import data_dir
import studio.ui.access as access
from studio.ui.arena_tab import build_arena_tab
from studio.ui.fairness import limit_pending_per_visitor
from studio.ui.generate_tab import build_generate_tab, on_refresh_lists
from studio.ui.jobs_tab import build_jobs_tab
from studio.ui.layers_tab import build_layers_tab

LOG = logging.getLogger(__name__)
INTRO = ("**SDXL-family studio** — generate with SDXL, SSD-1B, Vega and the embedded demo family side by side. "
         "The demo family runs offline on a CPU; real models load from the Hugging Face hub or a local folder.")
# In public mode only these endpoints are listed in the API docs and become MCP tools (read-only ones and
# generation within the caps); every other event is "undocumented": still callable by its api_name (the names
# are an interface), but not advertised and not a tool. Visibility is not a permission: handlers check that.
# (/list_loras shows paths relative to the studio's roots: ``display_path``.)
PUBLIC_TOOLS = frozenset({"generate", "list_models", "list_loras", "layers_map", "layers_plan", "arena_leaderboard",
                          "arena_draw_prompt"})


def build_app(cache: ModelCache | None = None, hosting: Hosting | None = None) -> gr.Blocks:
    """The studio's Blocks for ``hosting`` (default: `Hosting.from_env()`; it becomes `studio.hosting.current()`)."""
    hosting = hosting_mod.activate(hosting or Hosting.from_env())
    cache = cache or ModelCache()
    with gr.Blocks(title="SDXL-family studio") as demo:
        gr.Markdown(INTRO)
        access.sign_in_widgets(hosting)
        with gr.Tab("Generate") as generate:
            lists = build_generate_tab(cache, hosting)
        with gr.Tab("Layers"):
            build_layers_tab(cache, hosting)
        with gr.Tab("Train") as train:
            build_jobs_tab(runner=JobRunner(before_start=gpu_handover(cache)), hosting=hosting,  # a GPU job gets
                           tab=train)  # the GPU
        with gr.Tab("Arena"):
            build_arena_tab(cache, hosting=hosting)
        generate.select(on_refresh_lists, None, lists, api_name=False)  # a finished job's student/LoRA is listed
    if hosting.public:
        for fn in demo.fns.values():
            if fn.api_visibility == "public" and fn.api_name not in PUBLIC_TOOLS:
                fn.api_visibility = "undocumented"
    demo.studio_hosting = hosting
    return demo


def launch_options(hosting: Hosting) -> dict:
    """``Blocks.launch`` keyword arguments of a hosting (see the module docstring for the served files)."""
    options = dict(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if hosting.public else "127.0.0.1"),
                   allowed_paths=[], blocked_paths=hosting_mod.blocked_paths(),
                   max_file_size="10mb" if hosting.public else "20mb",
                   show_error=not hosting.public,  # public: only messages we wrote (gr.Error), never raw exceptions
                   ssr_mode=False, mcp_server=hosting.mcp)
    if hosting.public:
        options["enable_monitoring"] = False  # /monitoring/summary would publish per-event timings
    gate = hosting.admin_gate()
    if gate is not None:
        options.update(auth_dependency=access.auth_dependency(gate, hosting),
                       app_kwargs={"routes": access.admin_routes(gate, hosting)})
    return options


def launch(demo: gr.Blocks, hosting: Hosting | None = None, **kwargs):
    """Queue (size and default concurrency from the caps) and serve; ``kwargs`` override `launch_options`."""
    hosting = hosting or getattr(demo, "studio_hosting", None) or hosting_mod.current()
    cache_folder = get_cache_folder()
    for private in [data_dir(), hosting_mod.persistent_dir()]:
        if is_in_or_equal(private, cache_folder):
            raise ValueError(f"the data folder {private} lies inside Gradio's served cache folder {cache_folder}; "
                             "set STUDIO_DATA_DIR (or GRADIO_TEMP_DIR) elsewhere")
    Image.MAX_IMAGE_PIXELS = hosting.caps.init_pixels  # Pillow refuses decompression bombs above 2x this
    options = launch_options(hosting)
    options.update(kwargs)
    LOG.info("studio: %s mode, queue max_size %d", hosting.mode, hosting.caps.queue_size)
    demo.queue(max_size=hosting.caps.queue_size, default_concurrency_limit=hosting.caps.concurrency,
               api_open=not hosting.public)
    limit_pending_per_visitor(demo, hosting)  # one visitor cannot fill the queue (caps.pending)
    return demo.launch(**options)
