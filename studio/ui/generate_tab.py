"""Generate tab: one prompt, up to four models side by side with the same seed, stats beneath.

UI inputs map to ``on_generate``'s parameters by name: the GenerateRequest fields (``studio.ui.fields.handler_fields``), then the LoRA
section (``LORA_FIELDS``), the memory options (``MEMORY_FIELDS``) and the speed options (``SPEED_FIELDS``), in the
order of its signature (the API order; new parameters go last, with defaults). Each speed option shows its measured
effect, read from the committed bench reports (``studio.bench.notes``). Choosing models applies the first model's defaults from the registry (steps,
CFG, negative prompt; size = each model's native one) to every value the user has not changed.
"""
from __future__ import annotations

import inspect
import threading
import time

import gradio as gr
from PIL import Image

from studio.bench.notes import option_notes
from studio.compare import MAX_MODELS, STATS_CAPTION, STATS_COLUMNS, check_models, iter_side_by_side, stats_rows
from studio import hosting as hosting_mod
from studio.generation import MAX_BATCH, MAX_SIZE, MAX_STEPS, GenerateRequest, GenerationCancelled, load_init_image
from studio.hosting import Caps, Hosting, deliverable, display_path, gpu_task, redact
from studio.loading import ModelCache, vae_status
from studio.lora import LORA_WEIGHT_NAME, MAX_SCALE, LoraRef, lora_file
from studio.paths import DEMO_DIR, data_dir, model_roots, models_dir
from studio.registry import VAES, default_model, get_spec, list_models
from studio.reuse import MAX_INTERVAL
from studio.schedulers import SCHEDULERS
from studio.speed import ATTENTION, COMPILE, VAE_DECODE, check_choice
import studio.ui.access as access
from studio.ui.fields import whole

# SDXL/SSD-1B training buckets (the SSD-1B recipe trained at 1024², 1152×896 and 896×1152) and the demo size.
SIZE_PRESETS = {
    "model's native size": (0, 0), "1024×1024": (1024, 1024), "1152×896": (1152, 896), "896×1152": (896, 1152),
    "1216×832": (1216, 832), "832×1216": (832, 1216), "1344×768": (1344, 768), "768×1344": (768, 1344),
    "512×512": (512, 512), "64×64 (demo family)": (64, 64),
}
LORA_FIELDS = ("lora", "lora_scale", "lora_models")  # on_generate's LoRA parameters (after the request fields)
MEMORY_FIELDS = ("low_vram",)  # then the memory options (the VAE choice is the request's ``vae`` field)
SPEED_FIELDS = ("attention", "channels_last", "fuse_qkv", "vae_decode", "feature_reuse", "feature_reuse_branch",
                "compile")  # then the speed options: request fields, and the cache's compile mode
DEFAULT_FIELDS = ("steps", "guidance", "negative_prompt", "scheduler")  # from the registry when the model set changes
DISPLAY_PX, MAX_ZOOM = 384, 4  # small images are shown enlarged (whole-number zoom, nearest neighbour) up to this
_STOP: dict[str, threading.Event] = {}  # per browser session: the cancel button sets it, should_stop() reads it


def model_defaults(name: str) -> dict:
    """The registry's defaults for ``name`` (from its model card), keyed by request field."""
    spec = get_spec(name)
    return {"steps": spec.default_steps, "guidance": spec.default_guidance,
            "negative_prompt": spec.default_negative_prompt, "scheduler": spec.scheduler or "Euler"}


def apply_defaults(chosen: list[str], current: dict, applied: dict) -> tuple[dict, dict, str]:
    """Values for DEFAULT_FIELDS when the model set changes: the first chosen model's defaults, except where the
    user changed a value away from the defaults applied last time (their explicit value wins). Returns (values,
    the defaults now applied, a line saying so)."""
    known = [m for m in chosen or [] if m in {s.name for s in list_models()}]
    if not known:
        return dict(current), dict(applied), ""
    new = model_defaults(known[0])
    values, kept = {}, []
    for field in DEFAULT_FIELDS:
        touched = field in applied and current.get(field) != applied[field]
        values[field] = current[field] if touched else new[field]
        if touched and current[field] != new[field]:
            kept.append(field)
    return values, new, defaults_info(known, kept)


def defaults_info(chosen: list[str], kept: list[str]) -> str:
    def card(name):
        d, spec = model_defaults(name), get_spec(name)
        size = f"{spec.default_size}²" if spec.default_size else "its native size"
        neg = f", negative prompt “{d['negative_prompt']}”" if d["negative_prompt"] else ""
        return f"**{name}**: {d['scheduler']}, {d['steps']} steps, CFG {d['guidance']:g}{neg}, {size}"

    text = "Defaults applied from " + card(chosen[0])
    few = [card(m) for m in chosen[1:] if get_spec(m).few_step]
    others = [card(m) for m in chosen[1:] if model_defaults(m) != model_defaults(chosen[0]) and not get_spec(m).few_step]
    if few:
        text += ". Few-step models run with their own card: " + "; ".join(few)
    if others:
        text += ". Other cards (the request above runs on these too): " + "; ".join(others)
    if kept:
        text += ". Your own value kept for: " + ", ".join(kept)
    return text + "."


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


def build_request_widgets(defaults: dict) -> dict[str, gr.components.Component]:
    """One widget per GenerateRequest field, keyed by the field name."""
    w = {}
    w["prompt"] = gr.Textbox(label="Prompt", lines=2, value="a red circle on a blue background")
    w["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=1, value=defaults["negative_prompt"])
    with gr.Row():
        w["seed"] = gr.Number(label="Seed (-1 = random)", value=-1, precision=0)
        w["steps"] = gr.Slider(1, MAX_STEPS, value=defaults["steps"], step=1, label="Steps")
        w["guidance"] = gr.Slider(0, 30, value=defaults["guidance"], step=0.5, label="CFG scale")
    with gr.Row():
        w["scheduler"] = gr.Dropdown(list(SCHEDULERS), value=defaults["scheduler"], label="Sampler")
        w["batch_size"] = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Images per model")
    with gr.Row():
        preset = gr.Dropdown(list(SIZE_PRESETS), value="model's native size", label="Size preset")
        w["width"] = gr.Slider(0, MAX_SIZE, value=0, step=8, label="Width (0 = native)")
        w["height"] = gr.Slider(0, MAX_SIZE, value=0, step=8, label="Height (0 = native)")
    preset.change(lambda p: SIZE_PRESETS[p], preset, [w["width"], w["height"]], api_name=False)
    with gr.Accordion("Image to image", open=False):
        w["init_image"] = unopened(gr.Image(label="Init image (optional)", type="filepath", image_mode=None))
        w["strength"] = gr.Slider(0.05, 1.0, value=0.75, step=0.05, label="Strength")
    return w


def build_memory_widgets(hosting: Hosting) -> dict[str, gr.components.Component]:
    """VAE choice (a request field) and low-VRAM mode (a server setting: admins only in public mode)."""
    w = {}
    with gr.Accordion("Memory and precision", open=False):
        with gr.Row():
            w["vae"] = gr.Dropdown([(f"{name} ({vae_status(name)})", name) for name in VAES], value="default",
                                   label="VAE", info="fp16-fix: SDXL's VAE that decodes in fp16 without the fp32 "
                                                     "upcast; taesdxl: tiny preview decoder, fast, less detail "
                                                     "(SDXL-class models)")
            w["low_vram"] = gr.Checkbox(False, label="Low VRAM (model CPU offload)",
                                        info="weights stay in CPU memory, one component at a time on the GPU: "
                                             "slower, fits smaller cards; no effect without a GPU"
                                             + ("; a server setting, for admins" if hosting.public else ""))
    return w


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


def request_from_values(values: dict, caps: Caps | None = None) -> GenerateRequest:
    """Widget values keyed by field name -> a validated request (0 size = the model's native size). The init image
    (a file path) is refused above ``caps.init_pixels`` before it is decoded."""
    values = dict(values)
    for name in ("seed", "steps", "batch_size", "width", "height"):
        values[name] = whole(name, values[name]) if values[name] is not None else None
    if values.get("init_image") is not None:
        values["init_image"] = load_init_image(values["init_image"], caps)
    values["width"] = values["width"] or None
    values["height"] = values["height"] or None
    values["vae"] = values.get("vae") or "default"
    for name in ("feature_reuse", "feature_reuse_branch"):
        if values.get(name) is not None:
            values[name] = whole(name, values[name])
    return GenerateRequest(**values)


def find_loras() -> list[tuple[str, str]]:
    """(label, path) of LoRAs: ``*.safetensors`` under ``models_dir()/loras`` and ``assets/demo/loras``, plus trained
    LoRA output folders (``pytorch_lora_weights.safetensors``) anywhere under the models dir; checkpoints skipped."""
    found: dict[str, str] = {}
    sources = [(DEMO_DIR / "loras", "demo", "*.safetensors"), (models_dir() / "loras", "models", "*.safetensors"),
               (models_dir(), "models", LORA_WEIGHT_NAME)]
    for root, tag, pattern in sources:
        if not root.is_dir():
            continue
        for file in sorted(root.rglob(pattern)):
            if any(part.startswith("checkpoint-") for part in file.relative_to(root).parts):
                continue
            label = file.parent.name if file.name == LORA_WEIGHT_NAME else file.stem
            found.setdefault(str(file.parent if file.name == LORA_WEIGHT_NAME else file), f"{label} ({tag})")
    return [(label, display_path(path)) for path, label in found.items()]  # <data>/models/..., never absolute


def lora_map(models: list[str], lora: str | None, scale: float, lora_models: list[str] | None
             ) -> dict[str, list[LoraRef]]:
    """The ``loras`` argument of iter_side_by_side: ``lora`` at ``scale`` on ``lora_models`` (empty = every selected
    model); {} without a LoRA. ValueError for a target that is not among the selected models."""
    if not lora:
        return {}
    targets = [m for m in (lora_models or []) if m] or list(models)
    unknown = [m for m in targets if m not in models]
    if unknown:
        raise ValueError(f"LoRA target model(s) {unknown} are not among the selected models {list(models)}")
    if not isinstance(lora, str) or len(lora) > 1024:
        raise ValueError("lora: choose one of the listed LoRAs")
    ref = LoraRef(str(hosting_mod.resolve_display_path(lora)), float(scale if scale is not None else 1.0))
    return {m: [ref] for m in targets}


def display_image(image: Image.Image) -> tuple[Image.Image, int]:
    """A small image enlarged by a whole number (≤ MAX_ZOOM, nearest neighbour: pixels stay sharp) toward
    DISPLAY_PX; large ones unchanged (the gallery fits them to the column). Returns (image, zoom)."""
    zoom = max(1, min(MAX_ZOOM, DISPLAY_PX // max(image.size)))
    if zoom == 1:
        return image, 1
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST), zoom


class GenerateHandlers:
    """Event handlers bound to the app's model cache (the one deliberate piece of shared state) and its hosting."""

    def __init__(self, cache: ModelCache, hosting: Hosting | None = None):
        self.cache = cache
        self.hosting = hosting or hosting_mod.current()

    def on_generate(self, models: list[str], prompt: str, negative_prompt: str, seed: float,
                    steps: float, guidance: float, scheduler: str, batch_size: float, width: float, height: float,
                    init_image, strength: float, request: gr.Request, progress=gr.Progress(),
                    lora: str | None = None, lora_scale: float = 1.0, lora_models: list[str] | None = None,
                    vae: str = "default", low_vram: bool = False, attention: str = "sdpa",
                    channels_last: bool = False, fuse_qkv: bool = False, vae_decode: str = "auto",
                    feature_reuse: float = 1, feature_reuse_branch: float = 0, compile: str = "off"):
        """Stream each model's images as they finish; a table of stats (speed-up vs the first model) beneath.

        The parameters after ``models`` are GenerateRequest fields, named as in the dataclass (the API's names);
        then ``LORA_FIELDS`` (an optional LoRA, its scale and the models it applies to), the request's ``vae`` and
        ``low_vram`` (model CPU offload), then ``SPEED_FIELDS``: request fields, and ``compile``, the model cache's
        compile mode. A model that fails shows its error; the other columns still finish.
        The hosting's caps (models, steps, size, images per model, init-image pixels) are checked before anything
        loads; low VRAM and compile are server settings, changed only by admins in public mode.
        """
        caps = self.hosting.caps
        try:
            caps.check_text("prompt", prompt)
            caps.check_text("negative_prompt", negative_prompt)
            models = check_models(models or [])
            req = request_from_values(dict(prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps,
                                           guidance=guidance, scheduler=scheduler, batch_size=batch_size, width=width,
                                           height=height, init_image=init_image, strength=strength, vae=vae,
                                           attention=attention, channels_last=bool(channels_last),
                                           fuse_qkv=bool(fuse_qkv), vae_decode=vae_decode,
                                           feature_reuse=feature_reuse, feature_reuse_branch=feature_reuse_branch),
                                      caps)
            check_choice("compile", compile or "off", COMPILE)
            loras = lora_map(models, lora, lora_scale, lora_models)
            for ref in {r for refs in loras.values() for r in refs}:
                lora_file(ref, model_roots())  # inside the model roots, a .safetensors file: before anything runs
            caps.check_generation(models=len(models), steps=req.steps, width=req.width, height=req.height,
                                  batch=req.batch_size)
        except (ValueError, TypeError) as err:
            raise gr.Error(redact(str(err))) from None
        if bool(low_vram) != self.cache.offload:
            access.require_admin(request, "Switching low-VRAM mode (a server-wide memory setting)", self.hosting)
            self.cache.set_offload(bool(low_vram))
        if (compile or "off") != self.cache.compile:  # compiling takes minutes and stays on for every model
            access.require_admin(request, "Switching torch.compile (a server-wide setting)", self.hosting)
            self.cache.set_compile(compile or "off")
        stop = _STOP.setdefault(request.session_hash or "anon", threading.Event())
        stop.clear()
        out_dir = data_dir() / "generations" / time.strftime("%Y-%m-%d")
        results, files = [], []

        def on_step(step, total, info):
            phase = f" {info['phase']}" if "phase" in info else ""
            progress((step, total), desc=f"{info['model']}{phase} ({len(results) + 1}/{len(models)})")

        try:
            for result in iter_side_by_side(self.cache, models, req, roots=model_roots(), loras=loras,
                                            on_step=on_step, should_stop=stop.is_set, caps=caps):
                results.append(result)
                if result.error:
                    result.error = redact(result.error)
                    gr.Warning(f"{result.model}: {result.error}")
                files += [deliverable(p) for p in result.save(out_dir)]  # the data folder itself is never served
                yield _outputs(models, results, files)
        except GenerationCancelled:
            gr.Warning("Generation cancelled")
        except ValueError as err:  # a name that does not resolve: nothing ran
            raise gr.Error(redact(str(err))) from None


def _outputs(models, results, files):
    galleries = []
    for i in range(MAX_MODELS):
        if i < len(results) and results[i].error:
            galleries.append(gr.Gallery(value=None, label=f"{results[i].model} — failed (see the table)",
                                        visible=True))
        elif i < len(results):
            r, shown = results[i], []
            for j, im in enumerate(r.images):
                big, zoom = display_image(im)
                shown.append((big, f"{r.model} · seed {r.seed + j} · {im.width}×{im.height}"
                                   + (f" shown at {zoom}×" if zoom > 1 else "")))
            galleries.append(gr.Gallery(value=shown, label=r.model, visible=True, columns=min(len(shown), 2)))
        else:
            galleries.append(gr.Gallery(value=None, label=models[i] if i < len(models) else "",
                                        visible=i < len(models)))
    seed = results[0].seed if results else None
    return (*galleries, stats_rows(results), files, seed)


def api_parameters() -> list[str]:
    """on_generate's API parameters in order (what gradio_client passes): models, the request fields, LoRA, memory,
    speed."""
    params = list(inspect.signature(GenerateHandlers.on_generate).parameters)
    return [p for p in params if p not in ("self", "request", "progress")]


def on_cancel(request: gr.Request) -> str:
    _STOP.setdefault(request.session_hash or "anon", threading.Event()).set()
    return "cancelling…"


def on_list_models() -> dict:
    """Current registry (exported students and fine-tunes appear without a restart)."""
    return gr.Dropdown(choices=[s.name for s in list_models()])


def on_list_loras() -> dict:
    """Discovered LoRAs (a LoRA trained while the app runs appears without a restart)."""
    return gr.Dropdown(choices=[("none", "")] + find_loras())


def on_refresh_lists() -> tuple[dict, dict]:
    """Both lists at once (the app calls it when the Generate tab is opened: a job's result is there to pick)."""
    return on_list_models(), on_list_loras()


def on_models_change(chosen, steps, guidance, negative_prompt, scheduler, applied):
    """Apply the registry defaults of the newly chosen models (user-changed values stay)."""
    current = dict(steps=steps, guidance=guidance, negative_prompt=negative_prompt, scheduler=scheduler)
    values, applied, info = apply_defaults(list(chosen or []), current, applied or {})
    return (*(values[f] for f in DEFAULT_FIELDS), applied, info)


def build_lora_widgets(model_names: list[str]) -> dict[str, gr.components.Component]:
    """The LoRA accordion: which LoRA, its scale, the selected models it applies to (keyed by LORA_FIELDS)."""
    w = {}
    with gr.Accordion("LoRA", open=False):
        with gr.Row():
            w["lora"] = gr.Dropdown([("none", "")] + find_loras(), value="", label="LoRA", allow_custom_value=True,
                                    info="assets/demo/loras, <models dir>/loras and trained LoRA folders", scale=4)
            refresh = gr.Button("↻ LoRAs", scale=0)
        with gr.Row():
            w["lora_scale"] = gr.Slider(-MAX_SCALE, MAX_SCALE, value=1.0, step=0.05, label="LoRA scale (0 = off)")
            w["lora_models"] = gr.Dropdown(model_names, value=[], multiselect=True, allow_custom_value=True,
                                           label="Apply to (empty = every selected model)")
    refresh.click(on_list_loras, None, w["lora"], api_name="list_loras")
    return w


def build_generate_tab(cache: ModelCache, hosting: Hosting | None = None) -> list[gr.components.Component]:
    """The Generate tab; returns [models, lora], the outputs of ``on_refresh_lists``."""
    hosting = hosting or hosting_mod.current()
    names = [s.name for s in list_models()]
    first = default_model()
    defaults = model_defaults(first)
    widgets: dict[str, gr.components.Component] = {}
    with gr.Row():
        widgets["models"] = gr.Dropdown(names, value=[first], multiselect=True, max_choices=MAX_MODELS,
                                        label=f"Models (up to {MAX_MODELS}, same seed for all)", scale=4)
        refresh = gr.Button("↻ models", scale=0)
    defaults_md = gr.Markdown(defaults_info([first], []))
    applied = gr.State(defaults)
    widgets.update(build_request_widgets(defaults))
    widgets.update(build_memory_widgets(hosting))
    widgets.update(build_lora_widgets(names))
    widgets.update(build_speed_widgets())
    with gr.Row():
        go = gr.Button("Generate", variant="primary")
        cancel = gr.Button("Cancel", variant="stop")
    with gr.Row():
        galleries = [gr.Gallery(label=names[0] if i == 0 else "", visible=i == 0, columns=1, height="auto",
                                object_fit="scale-down", format="png",
                                elem_id=f"gallery-{i}") for i in range(MAX_MODELS)]
    stats = gr.Dataframe(headers=STATS_COLUMNS, label=STATS_CAPTION, interactive=False, wrap=True)
    with gr.Row():
        files = gr.File(label="PNGs with A1111 'parameters' metadata", file_count="multiple")
        with gr.Column():
            seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
            reuse = gr.Button("♻ reuse seed")
            status = gr.Markdown()
    inputs = [widgets[name] for name in api_parameters()]
    event = go.click(gpu_task(GenerateHandlers(cache, hosting).on_generate), inputs,
                     [*galleries, stats, files, seed_used], api_name="generate", **access.lane("gpu", hosting))
    cancel.click(on_cancel, None, status, cancels=[event], api_name="cancel")
    reuse.click(lambda s: s if s is not None else -1, seed_used, widgets["seed"], api_name=False)
    refresh.click(on_list_models, None, widgets["models"], api_name="list_models")
    models, lora_models = widgets["models"], widgets["lora_models"]
    models.change(lambda chosen, picked: gr.Dropdown(choices=list(chosen or []),
                                                     value=[m for m in picked or [] if m in (chosen or [])]),
                  [models, lora_models], lora_models, api_name=False)
    models.change(on_models_change, [models, *(widgets[f] for f in DEFAULT_FIELDS), applied],
                  [*(widgets[f] for f in DEFAULT_FIELDS), applied, defaults_md], api_name=False)
    return [models, widgets["lora"]]
