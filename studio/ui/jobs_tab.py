"""Train tab: launch distillation / LoRA jobs from presets (the TOML files under ``configs/``), watch them (loss curve,
ETA, validation grid, log tail), cancel, resume, delete, download outputs. A thin wrapper over
``studio.jobs.JobRunner`` (which owns the processes); the page polls with ``gr.Timer`` instead of holding a request
open.

The config editor is JSON keyed by the job kind's config field names; the common-field widgets write into it by name.
"""
from __future__ import annotations

import json
import shlex

import gradio as gr

from studio.jobs import (KINDS, LOSS_KEYS, JobRunner, command_line, format_seconds, list_presets, preset_config,
                         validate_config)
from studio.paths import data_dir, model_roots

COMMON_FIELDS = {  # TrainConfig field -> widget label (shared by every job kind)
    "steps": "Steps", "lr": "Learning rate", "batch_size": "Batch size", "checkpoint_every": "Checkpoint every",
    "validate_every": "Validate every", "max_minutes": "Max minutes (0 = no limit)"}
JOB_COLUMNS = ["id", "type", "name", "status", "step", "loss", "ETA", "message"]
PLOT_COLUMNS = ["step", "value", "series"]
LOG_LINES = 14  # the log box shows the whole tail


# ---------------------------------------------------------------- pure formatting

def parse_config(text: str) -> dict:
    try:
        config = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"the config is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ValueError("the config must be a JSON object of field names and values")
    return config


def cli_for(kind: str, config: dict) -> str:
    """A copy-paste shell snippet running the same job without the UI."""
    body = json.dumps(config, indent=1)
    cmd = " ".join(shlex.quote(c) for c in ["python"] + command_line(kind, "job.json")[1:])
    return f"cat > job.json <<'EOF'\n{body}\nEOF\n{cmd}"


def plot_frame(rows: list[dict], max_points: int = 1500):
    """Long-format frame (step, value, series) of the loss terms for gr.LinePlot (long runs thinned to about
    ``max_points`` steps, the last one kept)."""
    import pandas as pd

    if len(rows) > max_points:
        rows = rows[::-(-len(rows) // max_points)] + rows[-1:]
    data = [(r["step"], r[k], k) for r in rows for k in LOSS_KEYS if k in r]
    if not data:  # None, not an empty frame: the browser's plot keeps the colour scale of its first data (none)
        return None
    return pd.DataFrame(data, columns=PLOT_COLUMNS).astype({"step": "int64", "value": "float64", "series": "str"})


def job_rows(runner: JobRunner) -> list[list]:
    rows = []
    for job in reversed(runner.list()):  # newest first
        p = runner.progress(job.id)
        loss = f"{p['loss']:.4g}" if p["loss"] is not None else ""
        eta = format_seconds(p["eta_s"]) if job.status == "running" else ""
        msg = job.message if len(job.message) < 90 else job.message[:87] + "…"
        rows.append([job.id, job.kind, job.name, job.status, f"{p['step']}/{p['total']}", loss, eta, msg])
    return rows


def job_summary(runner: JobRunner, job_id: str) -> str:
    job, p = runner.status(job_id), runner.progress(job_id)
    speed = f" · {p['sec_per_step']:.2f} s/step" if p["sec_per_step"] else ""
    eta = f" · ETA {format_seconds(p['eta_s'])}" if job.status == "running" and p["eta_s"] is not None else ""
    out = f" · output `{job.output}`" if job.output else ""
    return f"**{job.id}** ({job.kind} → `{job.name}`): **{job.status}** · step {p['step']}/{p['total']}{speed}" \
           f"{eta}{out}\n\n{job.message}"


# ---------------------------------------------------------------- handlers

class JobsHandlers:
    """Event handlers bound to the app's one JobRunner."""

    def __init__(self, runner: JobRunner):
        self.runner = runner

    def on_preset(self, name: str):
        """Preset (a configs/*.toml file stem) -> job type, config JSON, the common-field values, its check."""
        try:
            kind, config = preset_config(name)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        return (kind, json.dumps(config, indent=1), *(config.get(f) for f in COMMON_FIELDS), check_text(kind, config),
                cli_for(kind, config))

    def on_check(self, kind: str, config_text: str):
        """Validate without launching: (message, CLI snippet)."""
        try:
            config = parse_config(config_text)
        except ValueError as e:
            return f"✗ {e}", ""
        return check_text(kind, config), cli_for(kind, config)

    def on_submit(self, kind: str, config_text: str, name: str):
        """Validate and queue; the job id (errors are raised before anything starts)."""
        try:
            job_id = self.runner.submit(kind, parse_config(config_text), name=name or "",
                                        roots=model_roots() + [data_dir()])
        except ValueError as e:
            raise gr.Error(str(e)) from e
        job = self.runner.status(job_id)
        return (f"✓ queued **{job_id}** ({job.status})", gr.Dropdown(choices=self._ids(), value=job_id),
                job_rows(self.runner))

    def on_list(self):
        self.runner.poll()
        return job_rows(self.runner), gr.Dropdown(choices=self._ids())

    def on_status(self, job_id: str | None):
        """(summary, loss plot frame, latest validation image, log tail, output files, command) of one job."""
        if not job_id:
            return "Select a job.", None, None, "", [], ""
        try:
            summary = job_summary(self.runner, job_id)
        except ValueError as e:  # deleted meanwhile
            return str(e), None, None, "", [], ""
        image = self.runner.latest_validation(job_id)
        return (summary, plot_frame(self.runner.metrics(job_id)), str(image) if image else None,
                "\n".join(self.runner.log_tail(job_id, LOG_LINES)), [str(p) for p in self.runner.outputs(job_id)],
                self.runner.shell_command(job_id))

    def on_tick(self, job_id: str | None, seen: dict):
        """Timer: poll the runner, refresh the table and the selected job; unchanged outputs are skipped."""
        self.runner.poll()
        rows, ids = job_rows(self.runner), self._ids()
        summary, plot, image, log, files, cmd = self.on_status(job_id)
        new = {"job": job_id, "rows": rows, "ids": ids, "summary": summary, "image": image, "log": log,
               "steps": 0 if plot is None else len(plot), "files": files, "cmd": cmd}
        seen = seen if seen and seen.get("job") == job_id else {}  # another job selected: send everything

        def fresh(key, value):
            return value if seen.get(key) != new[key] else gr.skip()

        return (fresh("rows", rows), fresh("ids", gr.Dropdown(choices=ids)), fresh("summary", summary),
                fresh("steps", plot), fresh("image", image), fresh("log", log), fresh("files", files),
                fresh("cmd", cmd), new)

    def _action(self, fn, job_id: str | None, done: str):
        if not job_id:
            raise gr.Error("select a job first")
        try:
            fn(job_id)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        gr.Info(done)
        return job_summary(self.runner, job_id) if fn != self.runner.delete else f"deleted {job_id}"

    def on_cancel(self, job_id: str | None) -> str:
        return self._action(self.runner.cancel, job_id, "cancel requested")

    def on_resume(self, job_id: str | None) -> str:
        return self._action(self.runner.resume, job_id, "resumed")

    def on_delete(self, job_id: str | None) -> str:
        return self._action(self.runner.delete, job_id, "deleted")

    def on_select_row(self, evt: gr.SelectData):
        row = evt.row_value if evt.row_value else None
        return row[0] if row else gr.skip()

    def _ids(self) -> list[str]:
        return [j.id for j in reversed(self.runner.list())]


def check_text(kind: str, config: dict) -> str:
    try:
        frozen = validate_config(kind, config | {"output_dir": "<job folder>/train"})
    except ValueError as e:
        return f"✗ {e}"
    return f"✓ valid {kind} config: {frozen['steps']} steps, batch {frozen['batch_size']}, lr {frozen['lr']:g}"


def on_field(config_text: str, *values):
    """Common-field widgets -> the JSON config (by field name); an unparsable editor is left alone."""
    try:
        config = parse_config(config_text)
    except ValueError:
        return gr.skip()
    for name, value in zip(COMMON_FIELDS, values):
        if value is not None:
            config[name] = int(value) if name != "lr" and name != "max_minutes" else float(value)
    return json.dumps(config, indent=1)


def on_config_edit(config_text: str):
    """JSON editor -> the common-field widgets."""
    try:
        config = parse_config(config_text)
    except ValueError:
        return tuple(gr.skip() for _ in COMMON_FIELDS)
    return tuple(config.get(name, gr.skip()) for name in COMMON_FIELDS)


# ---------------------------------------------------------------- layout

def build_jobs_tab(*, runner: JobRunner | None = None, poll_s: float = 2.0, watch: bool = True) -> JobRunner:
    """The Train tab; ``runner`` defaults to one on ``data_dir()/jobs`` (one per app). ``watch`` polls it from a
    background thread too, so queued jobs start with no browser open. Returns the runner."""
    runner = runner or JobRunner()
    if watch:
        runner.watch(poll_s)
    h = JobsHandlers(runner)
    presets = list_presets()
    first = presets[0].name
    kind0, config0 = preset_config(first)
    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown("### New job")
            preset = gr.Dropdown([(p.title, p.name) for p in presets], value=first, label="Preset (configs/*.toml)")
            with gr.Row():
                kind = gr.Radio(list(KINDS), value=kind0, label="Job type")
                name = gr.Textbox(label="Output name in the model list", placeholder="automatic")
            with gr.Row():
                fields = {f: gr.Number(value=config0.get(f), label=label, precision=None if f in ("lr", "max_minutes")
                                       else 0, min_width=100) for f, label in COMMON_FIELDS.items()}
            config = gr.Code(json.dumps(config0, indent=1), language="json", lines=16, max_lines=24,
                             label="Config (field names of the job type's config dataclass)", interactive=True,
                             elem_id="job-config")
            with gr.Row():
                check = gr.Button("Check")
                launch = gr.Button("Launch", variant="primary")
            check_md = gr.Markdown(check_text(kind0, config0), elem_id="job-check")
            cli = gr.Code(cli_for(kind0, config0), language="shell", label="Same job from a shell", lines=4)
        with gr.Column(scale=3):
            gr.Markdown("### Jobs")
            table = gr.Dataframe(job_rows(runner), headers=JOB_COLUMNS, interactive=False, wrap=True,
                                 column_widths=["21%", "8%", "15%", "10%", "9%", "8%", "8%", "21%"],
                                 label="Jobs (newest first; click a row to select)", elem_id="jobs-table")
            with gr.Row():
                selected = gr.Dropdown(h._ids(), value=None, label="Selected job", scale=4)
                refresh = gr.Button("↻ jobs", scale=0)
            summary = gr.Markdown("Select a job.", elem_id="job-summary")
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop")
                resume = gr.Button("Resume")
                delete = gr.Button("Delete")
            plot = gr.LinePlot(None, x="step", y="value", color="series", label="Loss", height=260,
                               elem_id="loss-plot")
            with gr.Row():
                image = gr.Image(label="Latest validation (distill: teacher row above the student row)",
                                 type="filepath", interactive=False, height=220, elem_id="validation-image")
                files = gr.File(label="Outputs", file_count="multiple", interactive=False, height=220)
            log = gr.Code(language=None, label="Log tail", lines=LOG_LINES, max_lines=LOG_LINES,
                          interactive=False, elem_id="job-log")  # no wrapping: the whole tail stays in view
            job_cli = gr.Code(language="shell", label="This job from a shell", lines=2)
    seen = gr.State({})
    timer = gr.Timer(poll_s)

    status_outputs = [summary, plot, image, log, files, job_cli]
    preset.change(h.on_preset, preset, [kind, config, *fields.values(), check_md, cli], api_name="jobs_preset")
    for widget in fields.values():
        widget.input(on_field, [config, *fields.values()], config, api_visibility="private")
    config.input(on_config_edit, config, list(fields.values()), api_visibility="private")
    check.click(h.on_check, [kind, config], [check_md, cli], api_name="jobs_validate")
    launch.click(h.on_submit, [kind, config, name], [check_md, selected, table], api_name="jobs_submit")
    refresh.click(h.on_list, None, [table, selected], api_name="jobs_list")
    selected.change(h.on_status, selected, status_outputs, api_name="jobs_status")
    table.select(h.on_select_row, None, selected, api_visibility="private")
    timer.tick(h.on_tick, [selected, seen], [table, selected, *status_outputs, seen], api_visibility="private",
               show_progress="hidden")
    cancel.click(h.on_cancel, selected, summary, api_name="jobs_cancel")
    resume.click(h.on_resume, selected, summary, api_name="jobs_resume")
    delete.click(h.on_delete, selected, summary, api_name="jobs_delete")
    return runner


if __name__ == "__main__":
    with gr.Blocks(title="Train") as demo:
        build_jobs_tab()
    demo.queue().launch(allowed_paths=[str(data_dir())])  # job outputs are downloadable
