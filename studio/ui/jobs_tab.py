"""Train tab: launch distillation / LoRA jobs from presets (the TOML files under ``configs/``), watch them (loss curve,
ETA, validation grid, log tail), cancel, resume, delete, download outputs. A thin wrapper over
``studio.jobs.JobRunner`` (which owns the processes); the page polls with ``gr.Timer`` instead of holding a request
open.

The form shows the common fields of the job kind's config class (``studio.train_config.form``: labels are field
names, help the fields' comments, ranges their validation bounds); the JSON editor ("advanced") holds every field.
Form and JSON map to each other by field name.

Who may do what (``studio.hosting``): in public mode starting a job is for admins; a job records its owner and only
the owner or an admin cancels, resumes, deletes it or sees its log, files and command. Anybody may list jobs, read a
preset and check a config; config paths are confined to the studio's folders before anything looks at them
(``studio.jobs.PathPolicy``). The tab is locked until an admin opens it; job files reach the page as staged copies.
"""
from __future__ import annotations

import json

import gradio as gr

import studio.ui.access as access
from studio import hosting as hosting_mod
from studio.hosting import Hosting, deliverable, redact
from studio.jobs import KINDS, JobRunner, PathPolicy, format_seconds, list_presets, prepare_config, preset_config
from studio.jobs.kinds import confine_config, missing_for
from studio.jobs.plot import loss_figure
from studio.jobs.presets import cli_preview
from studio.paths import data_dir
from studio.train_config import TrainConfig, config_class
from studio.train_config.form import FormField, apply_form, form_fields, form_values
from studio.ui.help import first_step

FIRST_STEP = ("pick a preset (the *demo* ones run on this CPU in minutes), adjust the form, press "
              "**Launch**; the job, its loss curve and its log appear on the right.")
COMMON_FIELDS = TrainConfig.FORM[:6]  # the optimisation fields /jobs_preset returns (in this order) after the config
OPTIMISE_FIELDS = TrainConfig.FORM  # shared by every job kind: one set of widgets
JOB_COLUMNS = ["job", "status", "step", "loss", "ETA"]  # the output name is in the summary beneath
LOG_LINES = 14  # the log box shows the whole tail
MAX_CONFIG_CHARS = 100_000  # of the JSON editor's text
OWNERS_ONLY = "(shown to the job's owner and admins)"


# ---------------------------------------------------------------- pure formatting

def parse_config(text: str) -> dict:
    if text is not None and not isinstance(text, str):
        raise ValueError(f"the config must be JSON text; got {type(text).__name__}")
    if len(text or "") > MAX_CONFIG_CHARS:
        raise ValueError(f"the config has {len(text):,} characters; at most {MAX_CONFIG_CHARS:,}")
    try:
        config = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"the config is not valid JSON: {e}") from e
    except RecursionError:
        raise ValueError("the config is nested too deeply") from None
    if not isinstance(config, dict):
        raise ValueError("the config must be a JSON object of field names and values")
    return config


def kind_fields(kind: str) -> tuple[str, ...]:
    """The form fields of a job kind beside the shared optimisation ones ("what to train")."""
    return tuple(config_class(kind).__dict__.get("FORM", ()))


def job_rows(runner: JobRunner) -> list[list]:
    rows = []
    for job in reversed(runner.list()):  # newest first
        p = runner.progress(job.id)
        loss = f"{p['loss']:.4g}" if p["loss"] is not None else ""
        eta = format_seconds(p["eta_s"]) if job.status == "running" else ""
        rows.append([job.id, shown_status(job), f"{p['step']}/{p['total']}", loss, eta])
    return rows


def shown_status(job) -> str:
    """The status a user should read: a running job asked to stop is "cancelling"."""
    return "cancelling" if job.status == "running" and job.cancel_requested is not None else job.status


def job_summary(runner: JobRunner, job_id: str) -> str:
    job, p = runner.status(job_id), runner.progress(job_id)
    speed = f" · {p['sec_per_step']:.2f} s/step" if p["sec_per_step"] else ""
    eta = f" · ETA {format_seconds(p['eta_s'])}" if job.status == "running" and p["eta_s"] is not None else ""
    out = f" · output `{hosting_mod.display_path(job.output)}`" if job.output else ""
    note = "stop requested: it checkpoints and stops after the current step" if shown_status(job) == "cancelling" \
        else redact(job.message)
    return f"**{job.id}** ({job.kind} → `{job.name}`): **{shown_status(job)}** · step {p['step']}/{p['total']}" \
           f"{speed}{eta}{out}\n\n{note}"


# ---------------------------------------------------------------- handlers

def check_text(kind: str, config: dict, policy: PathPolicy | None = None) -> str:
    """✓ or ✗ as launching would say, plus what this machine still lacks (downloads, data, a GPU) and how to get it."""
    policy = policy or PathPolicy.default()
    try:  # paths outside the studio's folders are refused before anything looks at them (no existence answers)
        config = confine_config(kind, config, policy)
    except ValueError as e:
        return f"✗ {redact(str(e))}"
    missing = missing_for(kind, config)
    bullets = "\n".join(f"- {redact(m)}" for m in missing)
    try:  # already confined: prepare_config validates it as submitting would
        frozen = prepare_config(kind, config, output_dir=data_dir() / "jobs" / "job" / "train")
    except ValueError as e:
        error = f"✗ {redact(str(e))}"
        return f"✗ **Not ready on this machine** — what is missing and how to get it:\n{bullets}\n\n{error}" \
            if missing else error
    ok = f"✓ valid {kind} config: {frozen['steps']} steps, batch {frozen['batch_size']}, lr {frozen['lr']:g}"
    return f"{ok}\n\n⚠ Before it can run here:\n{bullets}" if missing else ok


def _error(err: Exception) -> gr.Error:
    return gr.Error(redact(str(err)))


class JobsHandlers:
    """Event handlers bound to the app's one JobRunner and its hosting (who may do what, the caps)."""

    def __init__(self, runner: JobRunner, hosting: Hosting | None = None):
        self.runner = runner
        self.hosting = hosting or hosting_mod.current()

    def policy(self) -> PathPolicy:
        return PathPolicy.default(self.hosting.hub_datasets)

    def on_preset(self, name: str):
        """Preset (a configs/*.toml file stem) -> job type, config JSON, the common-field values, its check, CLI."""
        if not isinstance(name, str) or len(name) > 200:
            raise gr.Error("choose one of the listed presets")
        try:
            kind, config = preset_config(name)
        except ValueError as e:
            raise _error(e) from None
        if self.hosting.public:  # a downloaded teacher's hub-cache folder, shown as <hf cache>/… (it reads back)
            config = shown_paths(kind, config)
        values = form_values(config_class(kind), config, COMMON_FIELDS)
        return (kind, json.dumps(config, indent=1), *values.values(), check_text(kind, config, self.policy()),
                cli_preview(kind, config, name))

    def on_check(self, kind: str, config_text: str, preset: str = ""):
        """Validate without launching: (message, CLI snippet)."""
        try:
            config = parse_config(config_text)
        except ValueError as e:
            return f"✗ {e}", ""
        return check_text(kind, config, self.policy()), cli_preview(kind, config, preset or "")

    def on_submit(self, kind: str, config_text: str, name: str, request: gr.Request):
        """Validate and queue; the job id (errors are raised before anything starts). Admins only in public mode;
        the job records its owner; at most ``caps.queued_jobs`` jobs queued or running."""
        who = access.require_admin(request, "Starting a training job", self.hosting)
        try:
            self.hosting.caps.check_text("name", name, name=True)
            job_id = self.runner.submit(kind, parse_config(config_text), name=name or "", policy=self.policy(),
                                        owner=who.key, max_queued=self.hosting.caps.queued_jobs)
        except ValueError as e:
            raise _error(e) from None
        job = self.runner.status(job_id)
        return (f"✓ launched **{job_id}** as `{job.name}`: its status, loss and log follow on the right.",
                gr.Dropdown(choices=self._ids(), value=job_id), job_rows(self.runner))

    def on_list(self):
        self.runner.poll()
        return job_rows(self.runner), gr.Dropdown(choices=self._ids())

    def _view(self, job_id: str | None, request: gr.Request | None) -> dict:
        """What the page shows of one job; the image and files as paths in the job folder (not yet staged). The
        log, files, image and command only for its owner and admins."""
        empty = dict(summary="Select a job.", plot=None, steps=0, image=None, log="", files=[], cmd="")
        if not job_id:
            return empty
        try:
            summary, job = job_summary(self.runner, job_id), self.runner.status(job_id)
        except ValueError as e:  # deleted meanwhile, or no such job
            return empty | {"summary": redact(str(e))}
        metrics = self.runner.metrics(job_id)
        view = dict(summary=summary, plot=lambda: loss_figure(metrics, title=job_id), steps=len(metrics))
        who = access.visitor(request, self.hosting)
        if not (who.admin or (job.owner and job.owner == who.key)):
            return view | dict(image=None, log=OWNERS_ONLY, files=[], cmd="")
        image = self.runner.latest_validation(job_id)
        return view | dict(image=image, log=redact("\n".join(self.runner.log_tail(job_id, LOG_LINES))),
                           files=self.runner.outputs(job_id), cmd=redact(self.runner.shell_command(job_id)))

    def on_status(self, job_id: str | None, request: gr.Request):
        """(summary, loss plot, latest validation image, log tail, output files, command) of one job."""
        v = self._view(job_id, request)
        plot = v["plot"]() if v["plot"] else None
        return (v["summary"], plot, _staged(v["image"]), v["log"], [_staged(f) for f in v["files"]], v["cmd"])

    def on_tick(self, job_id: str | None, seen: dict, request: gr.Request):
        """Timer: poll the runner, refresh the table and the selected job; unchanged outputs are skipped (the plot
        is redrawn only when a step was logged; files are staged only when they changed)."""
        self.runner.poll()
        rows, ids = job_rows(self.runner), self._ids()
        v = self._view(job_id, request)
        new = {"job": job_id, "rows": rows, "ids": ids, "summary": v["summary"], "image": _signature([v["image"]]),
               "log": v["log"], "steps": v["steps"], "files": _signature(v["files"]), "cmd": v["cmd"]}
        seen = seen if seen and seen.get("job") == job_id else {}  # another job selected: send everything

        def fresh(key, value):
            return value() if seen.get(key) != new[key] else gr.skip()

        return (fresh("rows", lambda: rows), fresh("ids", lambda: gr.Dropdown(choices=ids)),
                fresh("summary", lambda: v["summary"]), fresh("steps", v["plot"] or (lambda: None)),
                fresh("image", lambda: _staged(v["image"])), fresh("log", lambda: v["log"]),
                fresh("files", lambda: [_staged(f) for f in v["files"]]), fresh("cmd", lambda: v["cmd"]), new)

    def _action(self, fn, job_id: str | None, verb: str, done: str, request: gr.Request | None):
        if not job_id:
            raise gr.Error("select a job first")
        try:
            owner = self.runner.status(job_id).owner
        except ValueError:
            owner = None  # refused alike below for a non-admin: a refusal says nothing about which jobs exist
        access.require_owner(request, owner, f"{verb} a training job", self.hosting)
        try:
            fn(job_id)
        except ValueError as e:
            raise _error(e) from None
        gr.Info(done)
        return job_summary(self.runner, job_id) if fn != self.runner.delete else f"deleted {job_id}"

    def on_cancel(self, job_id: str | None, request: gr.Request) -> str:
        return self._action(self.runner.cancel, job_id, "Cancelling", "cancel requested", request)

    def on_resume(self, job_id: str | None, request: gr.Request) -> str:
        def resume(job):
            return self.runner.resume(job, max_queued=self.hosting.caps.queued_jobs)

        return self._action(resume, job_id, "Resuming", "resumed", request)

    def on_delete(self, job_id: str | None, request: gr.Request) -> str:
        return self._action(self.runner.delete, job_id, "Deleting", "deleted", request)

    def on_select_row(self, evt: gr.SelectData):
        row = evt.row_value if evt.row_value else None
        return row[0] if row else gr.skip()

    def on_open(self, request: gr.Request):
        """The Train tab opened: unlocked (buttons, live polling) for admins; a note for everyone else."""
        who = access.visitor(request, self.hosting)
        buttons = [gr.Button(interactive=who.admin) for _ in range(4)]
        return (lock_text(self.hosting, who.admin), *buttons, gr.Timer(active=who.admin))

    def _ids(self) -> list[str]:
        return [j.id for j in reversed(self.runner.list())]


def shown_paths(kind: str, config: dict) -> dict:
    """``config`` with its absolute path-valued fields as the studio shows paths (``display_path``)."""
    def show(value):
        return hosting_mod.display_path(value) if isinstance(value, str) and value.startswith("/") else value

    out = dict(config)
    for name, what in config_class(kind).PATH_FIELDS.items():
        if name not in out:
            continue
        if what == "teachers" and isinstance(out[name], list):
            out[name] = [t | {"path": show(t.get("path"))} if isinstance(t, dict) else show(t) for t in out[name]]
        else:
            out[name] = show(out[name])
    return out


def _staged(path):
    """A job file as a staged copy for the page (the job folder itself is never served)."""
    return deliverable(path) if path else None


def _signature(paths) -> list:
    """What identifies a set of files for the timer's "unchanged" test: path, size and modification time."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
        except (OSError, AttributeError):
            out.append(None)
    return out


def lock_text(hosting: Hosting, admin: bool) -> str:
    if admin:
        return "" if not hosting.public else "🔓 Signed in as an admin: you can launch and control jobs."
    return ("🔒 **Training is for admins on this public studio.** You can browse the presets, check a config and "
            f"watch the jobs; launching, cancelling, resuming and deleting are locked. {hosting.how_to_become_admin()}")


# ---------------------------------------------------------------- form <-> JSON, by field name

class Form:
    """The form's widgets by field name: one set of optimisation fields, one group of "what to train" fields per
    job kind (only the selected kind's group is visible)."""

    def __init__(self, kind0: str, config0: dict):
        self.shared: dict[str, gr.components.Component] = {}
        self.by_kind: dict[str, dict[str, gr.components.Component]] = {}
        self.groups: dict[str, gr.Group] = {}
        for kind in KINDS:
            values = form_values(config_class(kind), config0 if kind == kind0 else {}, kind_fields(kind))
            with gr.Group(visible=kind == kind0) as self.groups[kind]:
                gr.Markdown(f"**What to train** ({kind})", padding=True)
                with gr.Row(equal_height=True):
                    self.by_kind[kind] = {f.name: widget(f, values[f.name])
                                          for f in form_fields(config_class(kind), kind_fields(kind))}
        values = form_values(config_class(kind0), config0, OPTIMISE_FIELDS)
        with gr.Group():
            gr.Markdown("**How to optimise** (every job type)", padding=True)
            with gr.Row(equal_height=True):
                self.shared = {f.name: widget(f, values[f.name])
                               for f in form_fields(config_class(kind0), OPTIMISE_FIELDS)}

    def widgets(self) -> list:
        return [*self.shared.values(), *(w for group in self.by_kind.values() for w in group.values())]

    def updates(self, kind: str, config: dict) -> dict:
        """{widget: value} for the fields of ``kind`` (the other kinds' widgets are left as they are)."""
        cls = config_class(kind)
        values = form_values(cls, config, OPTIMISE_FIELDS) | form_values(cls, config, kind_fields(kind))
        targets = self.shared | self.by_kind[kind]
        return {targets[name]: value for name, value in values.items()}


def widget(f: FormField, value):
    """The input of one form field, labelled by its config name, its help and range beneath."""
    common = dict(label=f.name, info=f.help, min_width=160)
    if f.kind in ("int", "float"):
        return gr.Number(value, minimum=f.minimum, maximum=f.maximum, precision=0 if f.kind == "int" else None,
                         **common)
    if f.kind == "bool":
        return gr.Checkbox(bool(value), **common)
    if f.kind == "choice":
        return gr.Dropdown(list(f.choices), value=value, allow_custom_value=f.custom, **common)
    return gr.Textbox(value, **common)


def on_form_field(name: str, policy: PathPolicy | None = None):
    """A form widget edited -> the JSON config with that field set (by name), its check and CLI preview."""
    def handler(kind: str, config_text: str, value, preset: str):
        try:
            config = parse_config(config_text)
        except ValueError as e:
            return gr.skip(), f"✗ {e} (fix the JSON under Advanced first)", gr.skip()
        config = apply_form(config_class(kind), config, {name: value})
        return json.dumps(config, indent=1), check_text(kind, config, policy), cli_preview(kind, config, preset or "")
    return handler


# ---------------------------------------------------------------- layout

def build_jobs_tab(*, runner: JobRunner | None = None, poll_s: float = 2.0, watch: bool = True,
                   hosting: Hosting | None = None, tab: gr.Tab | None = None) -> JobRunner:
    """The Train tab; ``runner`` defaults to one on ``data_dir()/jobs`` (one per app). ``watch`` polls it from a
    background thread too, so queued jobs start with no browser open. ``tab`` (the enclosing ``gr.Tab``) unlocks
    the controls for admins when they open it (public mode). Returns the runner."""
    hosting = hosting or hosting_mod.current()
    runner = runner or JobRunner()
    if watch:
        runner.watch(poll_s)
    h = JobsHandlers(runner, hosting)
    locked = hosting.public  # until an admin opens the tab
    presets = list_presets()
    first = presets[0].name
    kind0, config0 = preset_config(first)
    first_step(FIRST_STEP, elem_id="train-first-step")
    lock = gr.Markdown(lock_text(hosting, not locked), elem_id="train-lock")
    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown("### New job")
            preset = gr.Dropdown([(p.title, p.name) for p in presets], value=first, label="Preset (configs/*.toml)")
            with gr.Row():
                kind = gr.Radio(list(KINDS), value=kind0, label="Job type")
                name = gr.Textbox(label="Output name in the model list", placeholder="automatic")
            check_md = gr.Markdown(check_text(kind0, config0, h.policy()), elem_id="job-check")
            form = Form(kind0, config0)
            with gr.Accordion("Advanced: every field as JSON (the config dataclass's field names)", open=False):
                config = gr.Code(json.dumps(config0, indent=1), language="json", lines=16, max_lines=24,
                                 label="Config", interactive=True, elem_id="job-config")
            with gr.Row():
                check = gr.Button("Check")
                launch = gr.Button("Launch", variant="primary", interactive=not locked, elem_id="job-launch")
            cli = gr.Code(cli_preview(kind0, config0, first), language="shell", label="Same job from a shell",
                          lines=3, max_lines=14, wrap_lines=True, show_line_numbers=False, elem_id="job-cli")
        with gr.Column(scale=3):
            gr.Markdown("### Jobs")
            table = gr.Dataframe(job_rows(runner), headers=JOB_COLUMNS, interactive=False, wrap=False,
                                 column_widths=["44%", "16%", "14%", "12%", "14%"],
                                 label="Jobs (newest first; click a row to select)", elem_id="jobs-table")
            with gr.Row():
                selected = gr.Dropdown(h._ids(), value=None, label="Selected job", scale=4)
                refresh = gr.Button("↻ jobs", scale=0)
            summary = gr.Markdown("Select a job.", elem_id="job-summary")
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", interactive=not locked, elem_id="job-cancel")
                resume = gr.Button("Resume", interactive=not locked, elem_id="job-resume")
                delete = gr.Button("Delete", interactive=not locked, elem_id="job-delete")
            plot = gr.Plot(label="Loss", elem_id="loss-plot")
            with gr.Row():
                image = gr.Image(label="Latest validation (distill: teacher row above the student row)",
                                 type="filepath", interactive=False, height=220, elem_id="validation-image")
                files = gr.File(label="Outputs", file_count="multiple", interactive=False, height=220)
            log = gr.Code(language=None, label="Log tail", lines=LOG_LINES, max_lines=LOG_LINES,
                          interactive=False, elem_id="job-log")  # no wrapping: the whole tail stays in view
            job_cli = gr.Code(language="shell", label="This job from a shell", lines=2, wrap_lines=True,
                              show_line_numbers=False)
    seen = gr.State({})
    timer = gr.Timer(poll_s, active=not locked)  # public: polling starts when an admin opens the tab

    status_outputs = [summary, plot, image, log, files, job_cli]
    form_widgets = form.widgets()
    preset.change(h.on_preset, preset, [kind, config, *(form.shared[f] for f in COMMON_FIELDS), check_md, cli],
                  api_name="jobs_preset").then(
        lambda k, text: form.updates(k, parse_config(text)), [kind, config], form_widgets, api_visibility="private")
    kind.change(lambda k: [gr.Group(visible=k == other) for other in KINDS], kind, list(form.groups.values()),
                api_visibility="private")
    for field_name, w in [*form.shared.items(), *(i for g in form.by_kind.values() for i in g.items())]:
        w.input(on_form_field(field_name, h.policy()), [kind, config, w, preset], [config, check_md, cli],
                api_visibility="private")

    def on_config_edit(k: str, text: str, preset_name: str):
        try:
            parsed = parse_config(text)
        except ValueError as e:
            return {check_md: f"✗ {e}"}
        return form.updates(k, parsed) | {check_md: check_text(k, parsed, h.policy()), cli: cli_preview(k, parsed, preset_name)}

    config.input(on_config_edit, [kind, config, preset], [*form_widgets, check_md, cli], api_visibility="private")
    preset_name = gr.State(first)  # a State input is not an API parameter: /jobs_validate keeps (kind, config)
    preset.change(lambda name: name, preset, preset_name, api_visibility="private")
    check.click(h.on_check, [kind, config, preset_name], [check_md, cli], api_name="jobs_validate")
    launch.click(h.on_submit, [kind, config, name], [check_md, selected, table], api_name="jobs_submit")
    refresh.click(h.on_list, None, [table, selected], api_name="jobs_list")
    selected.change(h.on_status, selected, status_outputs, api_name="jobs_status")
    table.select(h.on_select_row, None, selected, api_visibility="private")
    timer.tick(h.on_tick, [selected, seen], [table, selected, *status_outputs, seen], api_visibility="private",
               show_progress="hidden")
    cancel.click(h.on_cancel, selected, summary, api_name="jobs_cancel")
    resume.click(h.on_resume, selected, summary, api_name="jobs_resume")
    delete.click(h.on_delete, selected, summary, api_name="jobs_delete")
    if tab is not None and hosting.public:
        tab.select(h.on_open, None, [lock, launch, cancel, resume, delete, timer], api_visibility="private")
    return runner


if __name__ == "__main__":
    with gr.Blocks(title="Train") as demo:
        build_jobs_tab()
    demo.queue().launch()
