"""Image inputs of the Generate tab: the init image (image-to-image) and the condition image of conditional models
(demo-sr: 4x super-resolution), both handed to the handler as the uploaded file's path in Gradio's upload cache,
unopened, so that ``studio.generation.load_init_image`` counts the pixels from the header and refuses them above the
hosting's cap before anything is decoded. The core request only ever gets the decoded RGB image (no user paths).
"""
from __future__ import annotations

import gradio as gr

from studio.registry import get_spec


def unopened(image: gr.Image) -> gr.Image:
    """``image`` handing its handler the uploaded file's path unopened (Gradio's own preprocessing opens it, and
    Pillow's decompression-bomb check would answer with a bare error): ``load_init_image`` counts the pixels from the
    header and refuses them above the cap before anything is decoded. (An instance override: a ``gr.Image``
    subclass would make Gradio write a .pyi stub next to this module.)"""
    preprocess = image.preprocess

    def from_path(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)  # a file of Gradio's upload cache (Gradio refuses paths outside it)
        return preprocess(payload)

    image.preprocess = from_path
    return image


def conditional_models(chosen: list[str] | None) -> list[str]:
    """The chosen models that take a condition image (unknown names are left to the generate handler)."""
    names = []
    for name in chosen or []:
        try:
            if get_spec(name).conditional:
                names.append(name)
        except ValueError:
            continue
    return names


def condition_note(chosen: list[str] | None) -> str:
    """What the condition image is for, per chosen conditional model ('' when none is chosen)."""
    parts = []
    for name in conditional_models(chosen):
        spec = get_spec(name)
        parts.append(f"**{name}** fits it to the output square, downsamples it to {spec.condition_size}x"
                     f"{spec.condition_size} and draws the {spec.default_size}x{spec.default_size} image from it")
    if not parts:
        return ""
    return ("Conditional model chosen: upload the image it starts from. " + "; ".join(parts)
            + ". Text-to-image models beside it ignore the condition image.")


def build_condition_widgets(chosen: list[str]) -> tuple[gr.Column, gr.Markdown, gr.Image]:
    """(box, note, image): the condition image and its note, shown only while a conditional model is chosen."""
    with gr.Column(visible=bool(conditional_models(chosen)), elem_id="gen-condition-box") as box:
        note = gr.Markdown(condition_note(chosen))
        image = unopened(gr.Image(label="Condition image", type="filepath", image_mode=None,
                                  sources=["upload", "clipboard"], elem_id="gen-condition"))
    return box, note, image


def on_condition_models(chosen: list[str] | None) -> tuple[dict, str]:
    """The box's visibility and note for the chosen models."""
    return gr.Column(visible=bool(conditional_models(chosen))), condition_note(chosen)
