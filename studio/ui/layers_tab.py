"""Layers tab: the block map of a model, pick units to remove, compare full vs ablated, leave-one-out sweep, export.

    with gr.Tab("Layers"):
        build_layers_tab(cache)

Besides the registry's models, the model list offers the released configs committed under ``assets/configs/`` that
no registry model covers (SD 1.4, BK-SDM): their block maps and removal plans need no weights; compare, sweep and
export do.

Widgets map to AblationConfig fields by name (``WIDGET_FIELDS``); each handler takes exactly those fields as named
parameters (the API names of /layers_compare, /layers_sweep, ...) and builds the config from them.

Lanes and caps (``studio.hosting``): compare and export share the "gpu" lane with the Generate tab (run-time ablation
patches the cached teacher's UNet); a sweep loads its own copy of the model and runs in the "sweep" lane, so it
cannot hold generation up, and is refused above the sweep-cost cap (units x prompts x seeds x steps; a comparison
counts its two models as two units). Export is for admins in public mode, as is naming a model by path; models by
path stay inside the studio's model roots.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

from studio import hosting as hosting_mod
from studio.ablation import (SWEEP_COLUMNS, AblationConfig, check_resolution, compare_ablation, config_plan,
                             export_plan, model_facts, model_rows, plan_cost, plot_sweep, removable_units, short_label,
                             sweep)
from studio.blocks import plot_block_map
from studio.generation import MAX_STEPS, GenerationCancelled
from studio.hosting import Hosting, deliverable, display_path, gpu_task, redact
from studio.loading import ModelCache
from studio.paths import model_roots
from studio.recipes import RECIPES
from studio.registry import default_model, list_models
from studio.released import released_models
import studio.ui.access as access
from studio.ui.fields import handler_fields, whole

MAP_COLUMNS = ["unit", "kind", "latent", "params", "% params", "MACs", "% MACs"]  # MACs: one batch-1 UNet forward
COMPARE_COLUMNS = ["", "full model", "ablated", "change"]
NO_RECIPE = "(none)"
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


def _fmt(n: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:g}"


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

    def on_map(self, model: str, resolution: float, request: gr.Request):
        """Block map table (down to transformer layers) and bar chart; the removable units of this model."""
        try:
            self._check_model(model, request)
            unet_config, factor, native = self._facts(model)
            size = resolution_of(resolution) or native
            rows = model_rows(unet_config, size, factor)
        except ValueError as err:
            raise gr.Error(redact(str(err))) from None
        params, macs = (sum(getattr(r, f) for r in rows if r.depth == 0) for f in ("params", "macs"))
        table = [["  " * r.depth + r.unit, r.kind, r.resolution, r.params, round(100 * r.params / params, 2),
                  r.macs, round(100 * r.macs / max(macs, 1), 2)] for r in rows if r.depth <= 2]
        fig = plot_block_map(rows, title=f"{model} at {size}²: {_fmt(params)} params, {_fmt(macs)} MACs per UNet "
                                         f"forward")
        units = _unit_choices(unet_config)
        info = (f"**{model}** at {size}×{size} px: UNet {params:,} params, {_fmt(macs)}MACs per forward (batch 1). "
                f"{len(units)} units can be removed one by one.")
        return table, fig, gr.CheckboxGroup(choices=units, value=[]), info

    def on_plan(self, model: str, units: list[str], recipe: str, resolution: float, request: gr.Request) -> str:
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
        return (f"Removing all ticked units together: {head}. {len(plan.units)} units; "
                f"params {cost['params']:,} → {cost['student_params']:,} "
                f"({kept:.1%} kept, −{_fmt(cost['delta_params'])}); MACs per forward −{_fmt(cost['delta_macs'])} "
                f"({cost['delta_macs'] / max(cost['macs'], 1):.1%}).")

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
        labels = [f"{p[:40]} · seed {s}" for p, s in cmp.pairs]
        c, r = cmp.cost, cmp.summary()

        def fid(x):
            return "n/a (prompt not in the demo grammar)" if x is None else f"{x:.2f}"
        table = [
            ["UNet params", f"{c['params']:,}", f"{c['student_params']:,}",
             f"−{c['delta_params']:,} ({c['delta_params'] / c['params']:.1%})"],
            ["MACs / UNet forward", _fmt(c["macs"]), _fmt(c["student_macs"]),
             f"−{c['delta_macs'] / max(c['macs'], 1):.1%}"],
            ["latency (s, wall time, all images)", f"{cmp.full_latency_s:.2f}", f"{cmp.ablated_latency_s:.2f}",
             f"×{cmp.latency_ratio:.2f}"],
            ["SSIM to full image", "1", f"{r['ssim']:.4f}", f"damage {1 - r['ssim']:.4f}"],
            ["PSNR to full image (dB)", "∞", f"{r['psnr']:.2f}" if r["psnr"] != float("inf") else "∞", ""],
            ["prompt fidelity (evaluator)", fid(r["full_fidelity"]), fid(r["ablated_fidelity"]), ""],
        ]
        head = f"{plan.name} plan ({c['kind']}), {len(plan.units)} units removed, {len(cmp.pairs)} image pair(s)."
        return (list(zip(cmp.full_images, labels)), list(zip(cmp.ablated_images, labels)), table, head)

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
        table = [[round(v, 5) if isinstance(v, float) else v for v in row] for row in result.table()]
        status = (f"{'Cancelled: ' if result.cancelled else ''}{len(result.rows)} units "
                  f"({result.cached} from the cache, {result.computed} generated) in {result.wall_s:.1f} s. "
                  f"Damage = 1 − SSIM to the full model's image (mean over prompts × seeds); ranked by damage per "
                  f"million parameters saved, least harmful first.")
        return table, fig, csv, status

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


def build_layers_tab(cache: ModelCache, hosting: Hosting | None = None) -> None:
    hosting = hosting or hosting_mod.current()
    handlers = LayersHandlers(cache, hosting)
    w: dict[str, gr.components.Component] = {}  # AblationConfig field -> widget
    with gr.Row():
        w["model"] = gr.Dropdown(model_choices(), value=default_model(), label="Model (teacher)", scale=3)
        w["resolution"] = gr.Number(value=0, precision=0, label="Resolution (px, 0 = native)", scale=1)
        show = gr.Button("Show block map", scale=1)
    info = gr.Markdown("Choose a model and press **Show block map**.")
    table = gr.Dataframe(headers=MAP_COLUMNS, interactive=False, label="Block map (down to transformer layers)",
                         max_height=360, column_widths=["34%", "14%", "8%", "11%", "11%", "11%", "11%"])
    with gr.Accordion("Params and MACs per block (chart)", open=True):
        plot = gr.Plot(show_label=False)
    gr.Markdown("### Remove units")
    with gr.Row():
        w["recipe"] = gr.Dropdown([NO_RECIPE, *RECIPES], value=NO_RECIPE, scale=1,
                                  label="Recipe (SSD-1B, Vega, KOALA: SDXL layout; BK-SDM: SD 1.x layout)")
        plan_info = gr.Markdown("Nothing selected: tick units or choose a recipe.")
    w["units"] = gr.CheckboxGroup(
        choices=_initial_units(w["model"].value), elem_id="layers-units", label="Units to remove",
        info="d/u = down/up block, mid = mid block; r1 = resnet 1, a0 = attention 0 (whole stack), a0.3 = its "
             "transformer layer 3; 'mid all' = the whole mid block. Each can be removed on its own.")
    with gr.Row():
        w["prompts"] = gr.Textbox(value="a red circle on a blue background", lines=2, scale=3,
                                  label="Prompts (one per line; the demo grammar gets evaluator scores)")
        w["seeds"] = gr.Textbox(value="0", label="Seeds (comma-separated)", scale=1)
        w["steps"] = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Steps", scale=1)
        w["guidance"] = gr.Slider(0, 30, value=5.0, step=0.5, label="CFG scale", scale=1)
    with gr.Tab("Compare"):
        compare = gr.Button("Compare full vs ablated", variant="primary")
        compare_info = gr.Markdown()
        with gr.Row():
            full = gr.Gallery(label="Full model", columns=4, height=300, object_fit="contain", elem_id="layers-full")
            ablated = gr.Gallery(label="Ablated", columns=4, height=300, object_fit="contain",
                                 elem_id="layers-ablated")
        numbers = gr.Dataframe(headers=COMPARE_COLUMNS, interactive=False, label="Numbers")
    with gr.Tab("Sweep"):
        with gr.Row():
            groups = gr.Checkbox(False, label="also whole attentions and the whole mid block (when none is ticked)")
            run_sweep = gr.Button("Sweep (leave-one-out over ticked units, or all)", variant="primary")
            cancel = gr.Button("Cancel sweep", variant="stop")
        sweep_info = gr.Markdown()
        ranked = gr.Dataframe(headers=list(SWEEP_COLUMNS), interactive=False, label="Ranked units", max_height=360)
        heatmap = gr.Plot(label="Damage over the UNet layout")
        csv = gr.File(label="CSV", interactive=False)
    with gr.Tab("Export student"):
        with gr.Row():
            out_name = gr.Textbox(label="New model name (lower-case, digits, . _ -)", value="pruned-student", scale=3)
            export = gr.Button("Export student", variant="primary", scale=1)
        export_info = gr.Markdown()

    map_outputs = [table, plot, w["units"], info]
    show.click(handlers.on_map, [w["model"], w["resolution"]], map_outputs, api_name="layers_map")
    w["model"].change(handlers.on_map, [w["model"], w["resolution"]], map_outputs, api_name=False)
    gr.on([w["units"].change, w["recipe"].change], handlers.on_plan,
          [w[n] for n in handler_fields(handlers.on_plan, AblationConfig)], plan_info, api_name="layers_plan")
    gpu = access.lane("gpu", hosting)
    compare.click(gpu_task(handlers.on_compare), [w[n] for n in handler_fields(handlers.on_compare, AblationConfig)],
                  [full, ablated, numbers, compare_info], api_name="layers_compare", **gpu)
    run_sweep.click(gpu_task(handlers.on_sweep),
                    [*(w[n] for n in handler_fields(handlers.on_sweep, AblationConfig)), groups],
                    [ranked, heatmap, csv, sweep_info], api_name="layers_sweep", **access.lane("sweep", hosting))
    cancel.click(on_cancel, None, sweep_info, api_name="layers_cancel")
    export.click(handlers.on_export, [*(w[n] for n in handler_fields(handlers.on_export, AblationConfig)), out_name],
                 export_info, api_name="layers_export", **gpu)


if __name__ == "__main__":
    with gr.Blocks(title="Layers") as demo:
        build_layers_tab(ModelCache())
    demo.queue(default_concurrency_limit=1).launch()
