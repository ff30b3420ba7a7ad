"""Layers tab (``build_layers_tab(cache)``): block map, units to remove, full vs ablated, leave-one-out sweep, export.

The model list also offers the released configs under ``assets/configs/`` that no registry model covers (SD 1.4,
BK-SDM): block maps and removal plans need no weights; compare, sweep and export do.

Widgets map to AblationConfig fields by name (``WIDGET_FIELDS``); each handler takes exactly those fields as named
parameters (the API names of /layers_compare, /layers_sweep, ...) and builds the config from them.

Lanes and caps (``studio.hosting``): compare and export share the "gpu" lane with Generate (ablation patches the
cached UNet); a sweep (and its estimate) runs on its own model copy in the "sweep" lane and is refused above the
sweep-cost cap (units x prompts x seeds x steps; a comparison counts as two units). Export and models by path are
for admins in public mode; paths stay inside the model roots.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

from studio import hosting as hosting_mod
from studio.ablation import (SWEEP_HEADERS, AblationConfig, check_resolution, compare_ablation, config_plan,
                             export_plan, model_facts, model_rows, plan_cost, plot_sweep, removable_units, short_label,
                             sweep, sweep_table)
from studio.ablation.estimate import LONG_RUN_S, estimate_sweep, format_duration
from studio.blocks import format_si, plot_block_map
from studio.generation import MAX_STEPS, GenerationCancelled
from studio.hosting import Hosting, deliverable, display_path, gpu_task, redact
from studio.loading import ModelCache
from studio.paths import model_roots
from studio.recipes import RECIPES, recipe_plan
from studio.registry import default_model, list_models
from studio.released import released_models
import studio.ui.access as access
from studio.ui.fields import handler_fields, whole
from studio.ui.help import first_step

FIRST_STEP = ("press **Show block map** to see where the parameters and MACs are, then tick units "
              "(or choose a recipe, which ticks its units) and press **Compare full vs ablated**.")
MAP_COLUMNS = ["unit", "module path", "kind", "latent", "params", "% params", "MACs", "% MACs"]  # batch-1 forward
COMPARE_COLUMNS = ["", "full model", "ablated", "change"]
NO_RECIPE = "(none)"
MIN_TIMED_IMAGES = 3  # compare shows latency only with at least this many images per side
_STOP: dict[str, threading.Event] = {}  # per browser session: the cancel button sets it, the sweep polls it


# ---------------------------------------------------------------- widget values -> config

def resolution_of(value) -> int | None:
    """The resolution widget: 0 or empty = the model's native size (None), else a checked image side."""
    size = whole("resolution", value or 0) or None
    check_resolution(size)
    return size


def config_from_values(values: dict) -> AblationConfig:
    """Widget values keyed by AblationConfig field name -> a validated config (0 resolution = native size)."""
    for name in ("model", "recipe", "prompts", "seeds"):
        if values[name] is not None and not isinstance(values[name], str):
            raise ValueError(f"{name} must be text; got {type(values[name]).__name__}")
    if not isinstance(values["units"] or [], (list, tuple)) or len(values["units"] or []) > 1000:
        raise ValueError("units: give a list of at most 1000 unit names")
    seeds = [s for s in str(values["seeds"]).replace(",", " ").split() if s]
    try:
        seeds = tuple(int(s) for s in seeds if len(s) <= 20)
    except ValueError:
        raise ValueError(f"seeds: give whole numbers separated by commas; got {str(values['seeds'])[:40]!r}") from None
    guidance = values["guidance"]
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
        raise ValueError(f"guidance must be a number; got {str(guidance)[:40]!r}")
    return AblationConfig(
        model=values["model"] or "", units=tuple(values["units"] or ()),
        recipe="" if values["recipe"] in (None, NO_RECIPE) else values["recipe"],
        prompts=tuple(p.strip() for p in str(values["prompts"]).splitlines() if p.strip()), seeds=seeds,
        steps=whole("steps", values["steps"]), guidance=float(guidance), resolution=resolution_of(values["resolution"]))


# ---------------------------------------------------------------- handlers

def config_only_models() -> list[str]:
    """Released UNet configs (assets/configs/) with no registry model: block map and plans only."""
    names = {s.name for s in list_models()}
    return [m for m in released_models() if m not in names]


def model_choices() -> list[tuple[str, str]]:
    """(label, value) of the model dropdown: the registry's models, then the config-only released ones."""
    return [(s.name, s.name) for s in list_models()] + [(f"{m} (released config, no weights)", m)
                                                       for m in config_only_models()]


class LayersHandlers:
    """Event handlers bound to the app's model cache (the one deliberate piece of shared state) and its hosting."""

    def __init__(self, cache: ModelCache, hosting: Hosting | None = None):
        self.cache = cache
        self.hosting = hosting or hosting_mod.current()

    def _check_model(self, model, request: gr.Request | None) -> None:
        """A listed model, or (admins, or everyone locally) a path, kept inside the model roots when loaded."""
        if not model:
            raise ValueError("choose a model")
        if model in {s.name for s in list_models()} or model in config_only_models():
            return
        if not isinstance(model, str) or len(model) > 1024:
            raise ValueError("model: choose one of the listed models")
        access.require_admin(request, "Naming a model by path", self.hosting)

    def _pipe(self, model: str):
        """The loaded teacher; a clear error for a config-only entry (it has no weights to generate with)."""
        if model in config_only_models():
            raise ValueError(f"{model} is a released UNet config without weights: its block map and removal plans "
                             f"work here, but compare, sweep and export need a model with weights (a registry model)")
        return self.cache.get(model, roots=model_roots())

    def _private_pipe(self, model: str):
        """A copy of the model of its own, loaded from disk (a sweep ablates its UNet in place, off the gpu lane)."""
        if model in config_only_models():
            self._pipe(model)  # its clear error
        private = ModelCache(self.cache.budget_bytes, self.cache.runtime, offload=self.cache.offload)
        return private.get(model, roots=model_roots())

    def _facts(self, model: str) -> tuple[dict, int, int]:
        try:
            return model_facts(model)
        except ValueError:  # not on disk as config files (e.g. a single .safetensors): load it
            pipe = self._pipe(model)
            return dict(pipe.unet.config), pipe.vae_scale_factor, pipe.unet.config.sample_size * pipe.vae_scale_factor

    def _config(self, values: dict, request: gr.Request | None) -> AblationConfig:
        """The config of a compare or sweep, within this server's caps (steps, size, prompt length)."""
        caps = self.hosting.caps
        for name in ("prompts", "seeds"):
            caps.check_text(name, values[name])
        config = config_from_values(values)
        self._check_model(config.model, request)
        caps.check_generation(steps=config.steps, width=config.resolution, height=config.resolution)
        return config

    def on_map(self, model: str, resolution: float, request: gr.Request | None = None):
        """Block map table (down to transformer layers) and bar chart; the removable units of this model."""
        try:
            self._check_model(model, request)
            unet_config, factor, native = self._facts(model)
            size = resolution_of(resolution) or native
            rows = model_rows(unet_config, size, factor)
        except ValueError as err:
            raise gr.Error(redact(str(err))) from None
        params, macs = (sum(getattr(r, f) for r in rows if r.depth == 0) for f in ("params", "macs"))
        indent = "\u00a0\u00a0\u00a0"  # non-breaking: the table keeps the hierarchy's indentation
        table = [[indent * r.depth + short_label(r.unit), r.unit, r.kind, r.resolution, format_si(r.params),
                  f"{100 * r.params / params:.2f}", format_si(r.macs), f"{100 * r.macs / max(macs, 1):.2f}"]
                 for r in rows if r.depth <= 2]
        fig = plot_block_map(rows, title=f"{model} at {size}²: {format_si(params)} params, "
                                         f"{format_si(macs, 'MACs')} per UNet forward")
        units = _unit_choices(unet_config)
        info = (f"**{model}** at {size}×{size} px: UNet {params:,} params ({format_si(params)}), "
                f"{format_si(macs, 'MACs')} per forward (batch 1). {len(units)} units can be removed one by one.")
        return table, fig, gr.CheckboxGroup(choices=units, value=[]), info

    def on_recipe(self, model: str, recipe: str, resolution: float, request: gr.Request | None = None):
        """A recipe chosen -> its units ticked (the user can then untick or add; "(none)" unticks everything)."""
        if recipe in (None, "", NO_RECIPE):
            return gr.CheckboxGroup(value=[])
        try:
            self._check_model(model, request)
            unet_config = self._facts(model)[0]
            units = recipe_plan(recipe, unet_config).units
        except ValueError as err:
            gr.Warning(redact(str(err)))
            return gr.skip()
        return gr.CheckboxGroup(value=[u for _, u in _unit_choices(unet_config) if u in units])

    def on_units_edited(self, model: str, units: list[str], recipe: str, request: gr.Request | None = None):
        """The user unticked one of the recipe's units: the plan is now the ticked units alone (recipe "(none)")."""
        if recipe in (None, "", NO_RECIPE):
            return gr.skip()
        try:
            self._check_model(model, request)
            unet_config = self._facts(model)[0]
            wanted = {u for _, u in _unit_choices(unet_config)} & recipe_plan(recipe, unet_config).units
        except ValueError:
            return gr.skip()
        return gr.skip() if wanted <= set(units or ()) else NO_RECIPE

    def on_plan(self, model: str, units: list[str], recipe: str, resolution: float, request: gr.Request | None = None) -> str:
        """Whether the chosen plan is config-expressible (a real smaller UNet) or runtime-only, and what it saves."""
        if not units and recipe in (None, "", NO_RECIPE):
            return "Nothing selected: tick units or choose a recipe."
        try:
            self._check_model(model, request)
            unet_config, factor, native = self._facts(model)
            config = config_from_values(dict(model=model, units=units, recipe=recipe, prompts="x", seeds="0",
                                             steps=1, guidance=0, resolution=resolution))
            plan = config_plan(config, unet_config)
            cost = plan_cost(unet_config, plan, resolution=config.resolution or native, vae_scale_factor=factor)
        except ValueError as err:
            return f"Removing all ticked units together: **invalid plan**: {redact(str(err))}"
        kept = cost["student_params"] / cost["params"]
        head = ("**Config-expressible**: a real, smaller diffusers UNet; it can be exported as a student"
                if cost["kind"] == "config" else
                "**Runtime-only**: no diffusers config says this; it is simulated by skipping modules (no export)")
        hidden = sorted(plan.units - set(units or ()))  # a recipe's units the list cannot show (e.g. KOALA's pairs)
        extra = f" The recipe also removes {', '.join(short_label(u) for u in hidden)} (not in the list)." \
            if hidden else ""
        source = f"the **{recipe}** recipe ({len(plan.units)} units, ticked below)" if config.recipe else \
            f"the {len(plan.units)} ticked units"
        return (f"Removing {source} together: {head}. "
                f"Params {format_si(cost['params'])} → {format_si(cost['student_params'])} ({kept:.1%} kept, "
                f"−{format_si(cost['delta_params'])}); MACs per forward −{format_si(cost['delta_macs'], 'MACs')} "
                f"({cost['delta_macs'] / max(cost['macs'], 1):.1%}).{extra}")

    def on_compare(self, model: str, units: list[str], recipe: str, prompts: str, seeds: str, steps: float,
                   guidance: float, resolution: float, request: gr.Request, progress=gr.Progress()):
        """Full model vs plan applied, same prompts and seeds; numbers beneath."""
        try:
            config = self._config(dict(model=model, units=units, recipe=recipe, prompts=prompts, seeds=seeds,
                                       steps=steps, guidance=guidance, resolution=resolution), request)
            self.hosting.caps.check_sweep(units=2, prompts=len(config.prompts), seeds=len(config.seeds),
                                          steps=config.steps, what="comparison (full + ablated model)")
            pipe = self._pipe(config.model)
            plan = config_plan(config, pipe.unet.config)
            cmp = compare_ablation(pipe, plan, config, on_step=lambda s, n, info: progress(
                (s, n), desc=f"{info['model']} model"))
        except GenerationCancelled:
            raise gr.Error("comparison cancelled") from None
        except ValueError as err:
            raise gr.Error(redact(str(err))) from None
        one_prompt = len(config.prompts) == 1
        labels = [f"seed {s}" if one_prompt else f"{p[:32]} · seed {s}" for p, s in cmp.pairs]
        c, r = cmp.cost, cmp.summary()
        medians = cmp.latency_medians(MIN_TIMED_IMAGES)
        latency = (["latency (s per image, median)", f"{medians[0]:.2f}", f"{medians[1]:.2f}",
                    f"×{medians[1] / medians[0]:.2f} (median of {len(cmp.pairs)} images; wall time)"] if medians else
                   ["latency", "—", "—", f"not shown: {len(cmp.pairs)} image(s) per side is timing noise; use "
                                          f"≥ {MIN_TIMED_IMAGES} seeds (the MACs above are exact)"])

        def fid(x):
            return "n/a (prompt not in the demo grammar)" if x is None else f"{x:.2f}"
        table = [
            ["UNet params", format_si(c["params"]), format_si(c["student_params"]),
             f"−{format_si(c['delta_params'])} (−{c['delta_params'] / c['params']:.1%})"],
            ["MACs / UNet forward", format_si(c["macs"], "MACs"), format_si(c["student_macs"], "MACs"),
             f"−{c['delta_macs'] / max(c['macs'], 1):.1%}"],
            latency,
            ["SSIM to full image", "1", f"{r['ssim']:.4f}", f"damage {1 - r['ssim']:.4f}"],
            ["PSNR to full image (dB)", "∞", f"{r['psnr']:.2f}" if r["psnr"] != float("inf") else "∞", ""],
            ["prompt fidelity (evaluator)", fid(r["full_fidelity"]), fid(r["ablated_fidelity"]), ""],
        ]
        head = (f"{plan.name} plan ({c['kind']}), {len(plan.units)} units removed, {len(cmp.pairs)} image pair(s)"
                + (f" of “{config.prompts[0]}”." if one_prompt else "."))
        return list(zip(cmp.full_images, labels)), list(zip(cmp.ablated_images, labels)), table, head

    def on_sweep(self, model: str, units: list[str], prompts: str, seeds: str, steps: float, guidance: float,
                 resolution: float, groups: bool, request: gr.Request, progress=gr.Progress()):
        """Leave-one-out over the ticked units (none ticked: every removable unit), ranked; heatmap and CSV. Runs on
        a copy of the model of its own; refused above the sweep-cost cap before anything is loaded."""
        key = request.session_hash or "anon"
        stop = _STOP.setdefault(key, threading.Event())
        stop.clear()
        try:
            config = self._config(dict(model=model, units=(), recipe="", prompts=prompts, seeds=seeds, steps=steps,
                                       guidance=guidance, resolution=resolution), request)
            if not isinstance(units or [], (list, tuple)) or len(units or []) > 1000:
                raise ValueError("units: give a list of at most 1000 unit names")
            tried = list(units or []) or removable_units(self._facts(config.model)[0], groups=bool(groups))
            self.hosting.caps.check_sweep(units=len(tried), prompts=len(config.prompts), seeds=len(config.seeds),
                                          steps=config.steps)
            pipe = self._private_pipe(config.model)
            result = sweep(pipe, config, units=list(units) or None, groups=bool(groups), should_stop=stop.is_set,
                           on_step=lambda s, n, info: progress((s, n), desc=info.get("unit", "full model")))
        except ValueError as err:
            raise gr.Error(redact(str(err))) from None
        finally:
            _STOP.pop(key, None)
        with tempfile.TemporaryDirectory() as tmp:  # handed over as a staged copy, never a data-folder path
            csv = deliverable(result.to_csv(Path(tmp) / f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}.csv"))
        fig = plot_sweep(result, dict(pipe.unet.config)) if result.rows else None
        status = (f"{'Cancelled: ' if result.cancelled else ''}{len(result.rows)} units "
                  f"({result.cached} from the cache, {result.computed} generated) in {format_duration(result.wall_s)}. "
                  f"Damage = 1 − SSIM to the full model's image (mean over prompts × seeds); ranked by damage per "
                  f"million parameters saved, least harmful first. The CSV also has latency_ratio: one timing per "
                  f"unit, too noisy to rank by.")
        return sweep_table(result.rows), fig, csv, status

    def on_sweep_estimate(self, model: str, units: list[str], prompts: str, seeds: str, steps: float,
                          guidance: float, resolution: float, groups: bool, request: gr.Request | None = None):
        """How long the sweep would take here (measured cost per step); (message, confirm button, start now?).
        Within the caps: measuring runs one short generation."""
        try:
            config = self._config(dict(model=model, units=(), recipe="", prompts=prompts, seeds=seeds, steps=steps,
                                       guidance=guidance, resolution=resolution), request)
            estimate = estimate_sweep(self._pipe(config.model), config, units=list(units) or None,
                                      groups=bool(groups))
        except ValueError as err:
            raise gr.Error(redact(str(err))) from None
        long = estimate.seconds > LONG_RUN_S
        text = f"Sweep: {estimate.describe()}" + (" Start it with the button below, or tick fewer units / fewer "
                                                  "steps." if long else " Starting…")
        return text, gr.Button(f"Run the sweep (≈ {format_duration(estimate.seconds)})", visible=long), not long

    def on_sweep_if(self, go: bool, model: str, units: list[str], prompts: str, seeds: str, steps: float,
                    guidance: float, resolution: float, groups: bool, request: gr.Request, progress=gr.Progress()):
        """The sweep, when the estimate said it is short (else nothing: the user confirms with the button)."""
        if not go:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return self.on_sweep(model, units, prompts, seeds, steps, guidance, resolution, groups, request, progress)


    def on_export(self, model: str, units: list[str], recipe: str, out_name: str, request: gr.Request) -> str:
        """Export the pruned, teacher-initialised student into the models dir; it appears in the model lists.
        Admins only in public mode."""
        access.require_admin(request, "Exporting a model", self.hosting)
        try:
            config = config_from_values(dict(model=model, units=units, recipe=recipe, prompts="x", seeds="0",
                                             steps=1, guidance=0, resolution=0))
            if not isinstance(out_name, (str, type(None))):
                raise ValueError("the new model name must be text")
            pipe = self._pipe(config.model)
            plan = config_plan(config, pipe.unet.config)
            out = export_plan(pipe, plan, (out_name or "").strip()[:200], teacher_name=config.model)
        except ValueError as err:
            raise gr.Error(redact(str(err))) from None
        return (f"Exported **{out.name}** (base `{config.model}`) to `{display_path(out)}`. It is in the model list "
                f"of the Generate tab now (press ↻ models) and can be chosen as a distillation student.")


def on_cancel(request: gr.Request) -> str:
    stop = _STOP.get(request.session_hash or "anon")  # only a sweep of this session, and no entry per stranger
    if stop is not None:
        stop.set()
    return "cancelling after the current image…"


# ---------------------------------------------------------------- layout

def _unit_choices(unet_config: dict) -> list[tuple[str, str]]:
    """(compact label, unit id) of every unit removable on its own, whole attentions and mid block included."""
    return [(short_label(u), u) for u in removable_units(unet_config, groups=True)]


def _initial_units(model: str) -> list[tuple[str, str]]:
    """The default model's removable units, so the API works before /layers_map (empty if its config is absent)."""
    try:
        return _unit_choices(model_facts(model)[0])
    except ValueError:
        return []


HOVER_JS = """() => {
  document.querySelectorAll('#layers-units label').forEach((label) => {
    const box = label.querySelector('input');
    if (box && box.name) label.title = box.name;
  });
}"""  # each unit's whole label shows its module path on hover (gradio names each checkbox after its value)


def build_layers_tab(cache: ModelCache, hosting: Hosting | None = None) -> None:
    hosting = hosting or hosting_mod.current()
    handlers = LayersHandlers(cache, hosting)
    w: dict[str, gr.components.Component] = {}  # AblationConfig field -> widget
    first_step(FIRST_STEP, elem_id="layers-first-step")
    with gr.Row():
        w["model"] = gr.Dropdown(model_choices(), value=default_model(), label="Model (teacher)", scale=3)
        w["resolution"] = gr.Number(value=0, precision=0, label="Resolution (px, 0 = native)", scale=1)
        show = gr.Button("Show block map", scale=1)
    info = gr.Markdown("Choose a model and press **Show block map**.")
    table = gr.Dataframe(headers=MAP_COLUMNS, interactive=False, label="Block map (down to transformer layers)",
                         max_height=360, wrap=False, elem_id="layers-map",
                         column_widths=["13%", "33%", "13%", "6%", "9%", "8%", "10%", "8%"])
    with gr.Accordion("Params and MACs per block (chart)", open=True):
        plot = gr.Plot(show_label=False)
    gr.Markdown("### Remove units")
    with gr.Row():
        w["recipe"] = gr.Dropdown([NO_RECIPE, *RECIPES], value=NO_RECIPE, scale=1,
                                  label="Recipe: ticks its units, adjust them after (SSD-1B, Vega, KOALA: SDXL "
                                        "layout; BK-SDM: SD 1.x layout)")
        plan_info = gr.Markdown("Nothing selected: tick units or choose a recipe.", elem_id="layers-plan")
    w["units"] = gr.CheckboxGroup(
        choices=_initial_units(w["model"].value), elem_id="layers-units", label="Units to remove (hover one for its module path)",
        info="The same names everywhere: d/mid/u = down/mid/up block; r1 = resnet 1; a0 = attention 0 (its whole "
             "stack); a0.3 = its transformer layer 3; 'mid' alone = the whole mid block.")
    with gr.Row():
        w["prompts"] = gr.Textbox(value="a red circle on a blue background", lines=2, scale=3,
                                  label="Prompts (one per line; the demo grammar gets evaluator scores)")
        w["seeds"] = gr.Textbox(value="0", label="Seeds (comma-separated; 1-4 fit one row)", scale=1)
        w["steps"] = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Steps", scale=1, elem_id="layers-steps")
        w["guidance"] = gr.Slider(0, 30, value=5.0, step=0.5, label="CFG scale", scale=1)
    with gr.Tab("Compare"):
        compare = gr.Button("Compare full vs ablated", variant="primary")
        compare_info = gr.Markdown()
        # 4 columns whatever the count: one image is shown at the size of four (uncropped), more wrap to new rows
        full = gr.Gallery(label="Full model", columns=4, fit_columns=False, height="auto", object_fit="contain", elem_id="layers-full")
        ablated = gr.Gallery(label="Ablated (same prompt and seed, in the same column)", columns=4, fit_columns=False, height="auto",
                             object_fit="contain", elem_id="layers-ablated")
        numbers = gr.Dataframe(headers=COMPARE_COLUMNS, interactive=False, label="Numbers", wrap=True,
                               column_widths=["22%", "18%", "18%", "42%"])
    with gr.Tab("Sweep"):
        with gr.Row():
            groups = gr.Checkbox(False, label="also whole attentions and the whole mid block (when none is ticked)")
            run_sweep = gr.Button("Sweep: leave-one-out over the ticked units, or all (time estimate first)",
                                  variant="primary", elem_id="layers-sweep")
            cancel = gr.Button("Cancel sweep", variant="stop")
        sweep_info = gr.Markdown(elem_id="layers-sweep-info")
        confirm = gr.Button("Run the sweep", visible=False, variant="primary", elem_id="layers-sweep-confirm")
        go = gr.State(False)
        ranked = gr.Dataframe(headers=SWEEP_HEADERS, interactive=False, wrap=True,
                              label="Ranked units (least damage per parameter saved first)", max_height=360,
                              column_widths=["5%", "8%", "7%", "8%", "8%", "8%", "10%", "7%", "7%", "8%", "24%"])
        heatmap = gr.Plot(label="Damage over the UNet layout")
        csv = gr.File(label="CSV (every column, latency_ratio included)", interactive=False)
    with gr.Tab("Export student"):
        with gr.Row():
            out_name = gr.Textbox(label="New model name (lower-case, digits, . _ -)", value="pruned-student", scale=3)
            export = gr.Button("Export student", variant="primary", scale=1)
        export_info = gr.Markdown()

    map_outputs = [table, plot, w["units"], info]
    recipe_inputs = [w["model"], w["recipe"], w["resolution"]]
    for event, api in ((show.click, "layers_map"), (w["model"].change, False)):
        event(handlers.on_map, [w["model"], w["resolution"]], map_outputs, api_name=api).then(
            handlers.on_recipe, recipe_inputs, w["units"], api_visibility="private").then(None, js=HOVER_JS)
    w["recipe"].focus(None, js=HOVER_JS)  # the units shown before any map (the default model's)
    w["recipe"].input(handlers.on_recipe, recipe_inputs, w["units"], api_visibility="private")
    w["units"].input(handlers.on_units_edited, [w["model"], w["units"], w["recipe"]], w["recipe"],
                     api_visibility="private")
    gr.on([w["units"].change, w["recipe"].change], handlers.on_plan,
          [w[n] for n in handler_fields(handlers.on_plan, AblationConfig)], plan_info, api_name="layers_plan")
    gpu = access.lane("gpu", hosting)
    compare.click(gpu_task(handlers.on_compare), [w[n] for n in handler_fields(handlers.on_compare, AblationConfig)],
                  [full, ablated, numbers, compare_info], api_name="layers_compare", **gpu)
    sweep_inputs = [*(w[n] for n in handler_fields(handlers.on_sweep, AblationConfig)), groups]
    sweep_outputs = [ranked, heatmap, csv, sweep_info]
    lane = access.lane("sweep", hosting)  # its own queue lane: a sweep never holds up generation
    run_sweep.click(gpu_task(handlers.on_sweep_estimate), sweep_inputs, [sweep_info, confirm, go],
                    api_name="layers_sweep_estimate", **lane).then(
        gpu_task(handlers.on_sweep_if), [go, *sweep_inputs], sweep_outputs, api_visibility="private", **lane)
    confirm.click(lambda: gr.Button(visible=False), None, confirm, api_visibility="private").then(
        gpu_task(handlers.on_sweep), sweep_inputs, sweep_outputs, api_name="layers_sweep", **lane)
    cancel.click(on_cancel, None, sweep_info, api_name="layers_cancel")
    export.click(handlers.on_export, [*(w[n] for n in handler_fields(handlers.on_export, AblationConfig)), out_name],
                 export_info, api_name="layers_export", **gpu)


if __name__ == "__main__":
    with gr.Blocks(title="Layers") as demo:
        build_layers_tab(ModelCache())
    demo.queue(default_concurrency_limit=1).launch()
