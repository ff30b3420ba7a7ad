"""The one-line "what to do first" at the top of each tab, in one style everywhere.

    first_step("Pick models, type a prompt and press **Generate**.")
"""
from __future__ import annotations

import gradio as gr


def first_step(text: str, **kwargs) -> gr.Markdown:
    """A Markdown line "**Start here:** <text>" (CSS class ``studio-first-step``)."""
    return gr.Markdown(f"**Start here:** {text}", elem_classes=["studio-first-step"], **kwargs)
