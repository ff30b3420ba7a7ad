"""The Generate tab's Speed accordion: each option with its measured effect, read from the committed bench reports
(``studio.bench.notes``), never typed by hand."""
from __future__ import annotations

import gradio as gr

from studio.bench.notes import option_notes
from studio.reuse import MAX_INTERVAL
from studio.speed import ATTENTION, COMPILE, VAE_DECODE


def build_speed_widgets() -> dict[str, gr.components.Component]:
    """The speed options (keyed by SPEED_FIELDS), each with what the committed bench measured for it."""
    notes = option_notes()

    def info(field: str, what: str) -> str:
        return f"{what} — {notes.get(field, 'not measured yet')}"

    w = {}
    with gr.Accordion("Speed", open=False):
        gr.Markdown("None is on by default: each costs speed or image fidelity somewhere. " + notes["source"])
        with gr.Row():
            w["feature_reuse"] = gr.Slider(1, MAX_INTERVAL, value=1, step=1, label="Feature reuse interval (1 = off)",
                                           info=info("feature_reuse", "DeepCache-style: the deep UNet features are "
                                                                      "recomputed every N steps and reused between"))
            w["feature_reuse_branch"] = gr.Slider(0, 11, value=0, step=1, label="Reuse branch",
                                                  info="skip branch recomputed on reused steps: 0 = shallowest "
                                                       "(fastest); at most 3 × the UNet's levels − 1")
        with gr.Row():
            w["compile"] = gr.Dropdown(list(COMPILE), value="off", label="torch.compile (the UNet)",
                                       info=info("compile", "regional = its transformer layers; the first call "
                                                            "after a change compiles; stays on for every model"))
            w["attention"] = gr.Dropdown(list(ATTENTION), value="sdpa", label="Attention",
                                         info=info("attention", "sdpa = PyTorch's fused attention (default)"))
        with gr.Row():
            w["channels_last"] = gr.Checkbox(False, label="channels_last",
                                             info=info("channels_last", "NHWC convolution weights for the call"))
            w["fuse_qkv"] = gr.Checkbox(False, label="Fused QKV projections",
                                        info=info("fuse_qkv", "one matmul for Q, K and V; not with a LoRA"))
            w["vae_decode"] = gr.Dropdown(list(VAE_DECODE), value="auto", label="VAE decode",
                                          info=info("vae_decode", "auto = one image at a time for batches, tiles "
                                                                  "above 1.5 MP; tiled = lowest memory"))
        gr.Markdown("Tiny preview VAE (taesdxl, in *Memory and precision*): " + notes.get("vae", "not measured yet")
                    + ". Low VRAM: " + notes.get("low_vram", "not measured yet") + ".")
    return w
