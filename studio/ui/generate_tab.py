"""Generate tab: one prompt, up to four models side by side with the same seed, stats beneath.

UI inputs map to ``on_generate``'s parameters by name: the GenerateRequest fields, then ``LORA_FIELDS``,
``MEMORY_FIELDS`` and ``SPEED_FIELDS``, in the order of its signature (the API order; new parameters go last, with
defaults). Each speed option shows its measured effect (``studio.bench.notes``). Choosing models applies the registry
defaults of the first ordinary model (``lead_first``) to every value the user has not changed.

Each model has its own column: a header (``studio.ui.generate_run``: progress, then what was made, its error or its
LoRA note, shown by a watcher event that follows the run) above its gallery. The model list marks the models whose
weights are not on this machine ("download needed"); its values stay the registry names (the API's).
"""
from __future__ import annotations

import inspect
import secrets
import time
from dataclasses import replace

import gradio as gr

from studio import hosting as hosting_mod
from studio.compare import MAX_MODELS, STATS_CAPTION, STATS_COLUMNS, check_models, iter_side_by_side
from studio.generation import (MAX_BATCH, MAX_SEED, MAX_SIZE, MAX_STEPS, GenerateRequest, GenerateResult,
                               GenerationCancelled, load_init_image)
from studio.hosting import Caps, Hosting, deliverable, display_path, gpu_task, redact
from studio.loading import ModelCache, vae_status
from studio.lora import LORA_WEIGHT_NAME, MAX_SCALE, LoraRef
from studio.lora_match import plan_loras
from studio.paths import DEMO_DIR, data_dir, model_roots, models_dir
from studio.registry import VAES, default_model, get_spec, is_available_offline, list_models
from studio.resolve import resolve_spec
from studio.schedulers import SCHEDULERS
from studio.speed import COMPILE, check_choice
import studio.ui.access as access
from studio.ui.speed_widgets import build_speed_widgets
from studio.ui.fields import whole
from studio.ui.generate_run import (CSS, Column, RunBoard, cancel_message, cancel_on_close, finished_view,
                                    made_text, run_outputs, watch)
from studio.ui.help import first_step
from studio.ui.image_inputs import build_condition_widgets, on_condition_models, unopened

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
NOT_LOCAL = "download needed"  # the mark of a model whose weights are not on this machine


def model_defaults(name: str) -> dict:
    """The registry's defaults for ``name`` (from its model card), keyed by request field."""
    spec = get_spec(name)
    return {"steps": spec.default_steps, "guidance": spec.default_guidance,
            "negative_prompt": spec.default_negative_prompt, "scheduler": spec.scheduler or "Euler"}


def lead_first(chosen: list[str]) -> list[str]:
    """The known models of ``chosen``, the one whose defaults the widgets take first: the first ordinary model (a
    few-step model beside one runs with its own card, see ``compare.iter_side_by_side``), else the first."""
    known = [m for m in chosen or [] if m in {s.name for s in list_models()}]
    lead = next((m for m in known if not get_spec(m).few_step), known[0] if known else None)
    return [lead, *(m for m in known if m != lead)] if lead else []


def apply_defaults(chosen: list[str], current: dict, applied: dict) -> tuple[dict, dict, str]:
    """Values for DEFAULT_FIELDS when the model set changes: the defaults of the first chosen ordinary model (of the
    first model when all are few-step), except where the user changed a value away from the defaults applied last
    time (their explicit value wins). Returns (values, the defaults now applied, a line saying so)."""
    known = lead_first(chosen)
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
    mixed = not get_spec(chosen[0]).few_step  # few-step models follow their cards only beside an ordinary one
    own = [m for m in chosen[1:] if get_spec(m).few_step and mixed]
    others = [card(m) for m in chosen[1:] if model_defaults(m) != model_defaults(chosen[0]) and m not in own]
    if own:
        text += ". Few-step models run with their own card: " + "; ".join(map(card, own))
    if others:
        text += ". Other cards (the request above runs on these too): " + "; ".join(others)
    if kept:
        text += ". Your own value kept for: " + ", ".join(kept)
    return text + "."


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


def request_from_values(values: dict, caps: Caps | None = None) -> GenerateRequest:
    """Widget values keyed by field name -> a validated request (0 size = the model's native size). The init and
    condition images (files of Gradio's upload cache) are refused above ``caps.init_pixels`` before they are decoded."""
    values = dict(values)
    for name in ("seed", "steps", "batch_size", "width", "height"):
        values[name] = whole(name, values[name]) if values[name] is not None else None
    values["seed"] = -1 if values["seed"] is None else values["seed"]  # an emptied seed box: random
    if values.get("init_image") is not None:
        values["init_image"] = load_init_image(values["init_image"], caps)
    if values.get("condition_image") is not None:
        values["condition_image"] = load_init_image(values["condition_image"], caps, what="condition image")
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


def lora_ref(lora: str | None, scale: float | None) -> LoraRef | None:
    """The chosen LoRA (the list shows paths relative to the studio's roots) at ``scale``, or None."""
    if not lora:
        return None
    if not isinstance(lora, str) or len(lora) > 1024:
        raise ValueError("lora: choose one of the listed LoRAs")
    return LoraRef(str(hosting_mod.resolve_display_path(lora)), float(scale if scale is not None else 1.0))


class GenerateHandlers:
    """Event handlers bound to the app's model cache (the one deliberate piece of shared state), its hosting and the
    board of runs the tab's watcher shows."""

    def __init__(self, cache: ModelCache, hosting: Hosting | None = None, board: RunBoard | None = None):
        self.cache = cache
        self.hosting = hosting or hosting_mod.current()
        self.board = board or RunBoard()

    def on_generate(self, models: list[str], prompt: str, negative_prompt: str, seed: float,
                    steps: float, guidance: float, scheduler: str, batch_size: float, width: float, height: float,
                    init_image, strength: float, request: gr.Request,
                    lora: str | None = None, lora_scale: float = 1.0, lora_models: list[str] | None = None,
                    vae: str = "default", low_vram: bool = False, attention: str = "sdpa",
                    channels_last: bool = False, fuse_qkv: bool = False, vae_decode: str = "auto",
                    feature_reuse: float = 1, feature_reuse_branch: float = 0, compile: str = "off",
                    condition_image=None):
        """Stream each model's images as they finish; a table of stats (speed-up vs the first model) beneath.

        The parameters after ``models`` are GenerateRequest fields, named as in the dataclass (the API's names);
        then ``LORA_FIELDS`` (an optional LoRA, its scale and the models it applies to: empty = every selected model
        it fits, see ``studio.lora_match``), the request's ``vae`` and ``low_vram`` (model CPU offload). A model that
        fails shows its error in its own column; the other columns still finish. A cancelled model keeps its
        partial image (marked, not saved). The hosting's caps (models, steps, size, images per model, init-image
        pixels) are checked before anything loads; low VRAM and torch.compile are server settings, changed only by admins in
        public mode. Then ``SPEED_FIELDS``: request fields, and ``compile``, the model cache's compile mode. Last the
        condition image of conditional models (``studio.ui.image_inputs``; ignored by text-to-image models).
        """
        run = self.board.start(request.session_hash or "anon")
        if run.stop.is_set():  # cancelled while it waited in the queue
            yield tuple(gr.skip() for _ in range(MAX_MODELS + 3))  # the last run's images stay
            return
        caps = self.hosting.caps
        try:
            caps.check_text("prompt", prompt)
            caps.check_text("negative_prompt", negative_prompt)
            names = check_models(models or [])
            req = request_from_values(dict(prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps,
                                           guidance=guidance, scheduler=scheduler, batch_size=batch_size, width=width,
                                           height=height, init_image=init_image, strength=strength, vae=vae,
                                           attention=attention, channels_last=bool(channels_last),
                                           fuse_qkv=bool(fuse_qkv), vae_decode=vae_decode,
                                           feature_reuse=feature_reuse, feature_reuse_branch=feature_reuse_branch,
                                           condition_image=condition_image), caps)
            check_choice("compile", compile or "off", COMPILE)
            caps.check_generation(models=len(names), steps=req.steps, width=req.width, height=req.height,
                                  batch=req.batch_size)
            specs = [resolve_spec(m, roots=model_roots()) for m in names]
            # the LoRA file is checked (inside the model roots, a .safetensors file) before anything runs
            loras, notes = plan_loras(specs, lora_ref(lora, lora_scale), lora_models, roots=model_roots())
            if bool(low_vram) != self.cache.offload:
                access.require_admin(request, "Switching low-VRAM mode (a server-wide memory setting)", self.hosting)
            if (compile or "off") != self.cache.compile:  # compiling takes minutes and stays on for every model
                access.require_admin(request, "Switching torch.compile (a server-wide setting)", self.hosting)
        except (ValueError, TypeError) as err:
            run.finish("failed", f"Nothing ran: {redact(str(err))}")
            raise gr.Error(redact(str(err))) from None
        except gr.Error as err:
            run.finish("failed", f"Nothing ran: {err}")
            raise
        if req.seed == -1:  # resolved here: a cancelled model's partial image shows the seed every model used
            req = replace(req, seed=secrets.randbelow(MAX_SEED + 1))
        run.columns = [Column(s.name, lora=notes[s.name].text, lora_warning=notes[s.name].warning) if s.name in notes
                       else Column(s.name) for s in specs]
        names = [s.name for s in specs]
        self.cache.set_offload(bool(low_vram))
        self.cache.set_compile(compile or "off")
        out_dir = data_dir() / "generations" / time.strftime("%Y-%m-%d")
        results, files = [], []
        yield run_outputs(names, results, files, req.seed)  # every column visible and empty: its header shows progress
        try:
            for result in iter_side_by_side(self.cache, specs, req, roots=model_roots(), loras=loras,
                                            on_step=run.on_step, should_stop=run.stop.is_set, caps=caps):
                results.append(result)
                if result.error:
                    result.error = redact(result.error)
                    run.finish_column(result.model, "failed", result.error)
                else:
                    run.finish_column(result.model, "done", made_text(result))
                    files += [deliverable(p) for p in result.save(out_dir)]  # the data folder itself is never served
                if len(results) == len(names):  # the last model: the status says so with its images, not after
                    run.finish("done", _summary(results, names))
                yield run_outputs(names, results, files, req.seed)
        except GenerationCancelled as stop:
            model = stop.model or names[len(results)]
            results.append(GenerateResult(model, stop.images, req.seed, req, None, [], loras.get(model, []),
                                          error=f"cancelled at step {stop.step}/{stop.total}", cancelled=True))
            partial = "partial image below (not saved)" if stop.images else "nothing decoded"
            run.finish_column(model, "cancelled", f"cancelled at step {stop.step}/{stop.total}: {partial}")
            run.finish("cancelled", cancel_message(model, stop.step, stop.total))
            yield run_outputs(names, results, files, req.seed)
        except ValueError as err:  # a name that does not resolve: nothing ran
            run.finish("failed", f"Nothing ran: {redact(str(err))}")
            raise gr.Error(redact(str(err))) from None
        finally:
            run.finish("done", _summary(results, names))


def _summary(results: list[GenerateResult], names: list[str]) -> str:
    failed = [r.model for r in results if r.error and not r.cancelled]
    return (f"Done: {len(results) - len(failed)} of {len(names)} models"
            + (f"; failed: {', '.join(failed)} (see its column)" if failed else "") + ".")


def api_parameters() -> list[str]:
    """on_generate's API parameters in order (what gradio_client passes): models, the request fields, LoRA, memory,
    speed."""
    params = list(inspect.signature(GenerateHandlers.on_generate).parameters)
    return [p for p in params if p not in ("self", "request", "progress")]


def model_choices() -> list[tuple[str, str]]:
    """(label, name) of every registry model; the label marks models whose weights (or their base's) are not on
    this machine, which load from the Hugging Face hub on first use."""
    specs = {s.name: s for s in list_models()}

    def local(spec) -> bool:
        return is_available_offline(spec) and (spec.base not in specs or is_available_offline(specs[spec.base]))

    return [(name if local(spec) else f"{name} ({NOT_LOCAL})", name) for name, spec in specs.items()]


def on_list_models() -> dict:
    """Current registry (exported students and fine-tunes appear without a restart)."""
    return gr.Dropdown(choices=model_choices())


def on_reuse_seed(seed_used):
    """The last run's seed into the seed box; before any run there is none (the box is left as it is)."""
    if seed_used is None:
        gr.Info("No seed yet: generate first, then reuse the seed it used.")
        return gr.skip()
    return seed_used


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
                                           label="Apply to (empty = every selected model it fits)",
                                           info="a LoRA fits the UNet architecture it was made for; a teacher's LoRA "
                                                "on a student needs porting (the column says how)")
    refresh.click(on_list_loras, None, w["lora"], api_name="list_loras")
    return w


def build_generate_tab(cache: ModelCache, hosting: Hosting | None = None) -> list[gr.components.Component]:
    """The Generate tab; returns [models, lora], the outputs of ``on_refresh_lists``."""
    hosting = hosting or hosting_mod.current()
    names = [s.name for s in list_models()]
    first = default_model()
    defaults = model_defaults(first)
    widgets: dict[str, gr.components.Component] = {}
    first_step(f"Pick up to {MAX_MODELS} models, type a prompt and press **Generate**: each model fills its own "
               "column as it finishes (the demo family runs offline on a CPU in seconds).")
    with gr.Row():
        widgets["models"] = gr.Dropdown(model_choices(), value=[first], multiselect=True, max_choices=MAX_MODELS,
                                        label=f"Models (up to {MAX_MODELS}, same seed for all)", scale=4,
                                        info=f"“{NOT_LOCAL}”: its weights are not on this machine; they download "
                                             "from the Hugging Face hub on first use (several GB, needs internet)")
        refresh = gr.Button("↻ models", scale=0)
    defaults_md = gr.Markdown(defaults_info([first], []), elem_id="gen-defaults")
    applied = gr.State(defaults)
    condition_box, condition_md, widgets["condition_image"] = build_condition_widgets([first])
    widgets.update(build_request_widgets(defaults))
    widgets.update(build_memory_widgets(hosting))
    widgets.update(build_lora_widgets(names))
    widgets.update(build_speed_widgets())
    with gr.Row(equal_height=True):
        go = gr.Button("Generate", variant="primary", scale=1, elem_id="gen-go")
        cancel = gr.Button("Cancel", variant="stop", scale=0, min_width=120, elem_id="gen-cancel")
        status = gr.Markdown(elem_id="gen-status")
    with gr.Row():
        headers, galleries, columns = [], [], []
        for i in range(MAX_MODELS):
            with gr.Column(min_width=160, visible=i == 0, elem_classes=["gen-column"]) as col:  # one per model
                headers.append(gr.HTML(elem_id=f"gen-col-{i}", padding=False))
                galleries.append(gr.Gallery(label=first if i == 0 else "", columns=1, height="auto",
                                            object_fit="scale-down", format="png", elem_id=f"gallery-{i}"))
            columns.append(col)
    stats = gr.Dataframe(headers=STATS_COLUMNS, label=STATS_CAPTION, interactive=False, wrap=True)
    with gr.Row():
        files = gr.File(label="PNGs with A1111 'parameters' metadata", file_count="multiple")
        with gr.Column():  # shown once a run has a seed: before that there is nothing to reuse
            seed_used = gr.Number(label="Seed used", precision=0, interactive=False, visible=False,
                                  elem_id="gen-seed-used")
            reuse = gr.Button("♻ reuse seed", visible=False, elem_id="gen-reuse-seed")
    gr.HTML(f"<style>{CSS}</style>", padding=False, container=False)
    handlers = GenerateHandlers(cache, hosting)
    board = handlers.board
    cancel_on_close(board)
    token = gr.State(None)  # the click's run, followed by the watcher (server side)

    async def on_queue(request: gr.Request) -> str:  # async: never waits for a worker thread
        return board.queue(request.session_hash or "anon")

    async def on_watch(run_token: str | None):
        async for shown in watch(board, run_token):
            started = board.get(run_token) is not None and bool(board.get(run_token).columns)
            yield (*shown, *(gr.update(visible=True) if started else gr.skip() for _ in range(2)))

    async def on_cancel(request: gr.Request) -> str:  # async: a cancel must not queue behind busy worker threads
        return board.cancel(request.session_hash or "anon")

    async def on_finished(run_token: str | None):  # after the run's event and after a cancel's reply
        return finished_view(board.get(run_token))

    inputs = [widgets[name] for name in api_parameters()]
    queued = go.click(on_queue, None, token, api_name=False, show_progress="hidden", concurrency_limit=None,
                      concurrency_id="generate-status")
    generated = queued.then(gpu_task(handlers.on_generate), inputs, [*galleries, stats, files, seed_used],
                            api_name="generate", show_progress="hidden", **access.lane("gpu", hosting))
    generated.then(on_finished, token, [status, *headers], api_name=False, show_progress="hidden",
                   concurrency_limit=None, concurrency_id="generate-status")
    queued.then(on_watch, token, [status, *headers, seed_used, reuse], api_name=False, show_progress="hidden",
                concurrency_limit=None, concurrency_id="generate-status")
    cancelled = cancel.click(on_cancel, None, status, api_name="cancel", show_progress="hidden",
                             concurrency_limit=None, concurrency_id="generate-status")
    cancelled.then(on_finished, token, [status, *headers], api_name=False, show_progress="hidden",
                   concurrency_limit=None, concurrency_id="generate-status")
    reuse.click(on_reuse_seed, seed_used, widgets["seed"], api_name=False)
    refresh.click(on_list_models, None, widgets["models"], api_name="list_models")
    models, lora_models = widgets["models"], widgets["lora_models"]
    models.change(lambda chosen, picked: gr.Dropdown(choices=list(chosen or []),
                                                     value=[m for m in picked or [] if m in (chosen or [])]),
                  [models, lora_models], lora_models, api_name=False)
    models.change(lambda chosen: [gr.Column(visible=i < len(chosen or [])) for i in range(MAX_MODELS)], models,
                  columns, api_name=False, show_progress="hidden")
    models.change(on_condition_models, models, [condition_box, condition_md], api_name=False, show_progress="hidden")
    models.change(on_models_change, [models, *(widgets[f] for f in DEFAULT_FIELDS), applied],
                  [*(widgets[f] for f in DEFAULT_FIELDS), applied, defaults_md], api_name=False)
    return [models, widgets["lora"]]
