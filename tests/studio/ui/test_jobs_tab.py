"""Train tab: field map, pure formatting, and the named endpoints through gradio_client on a live localhost server
(presets from configs/, validate, refused bad config, submit a tiny distillation, a stop at a known step, resume,
cancel of a queued job, status with loss/log/outputs, delete)."""
import dataclasses
import json
import time

import gradio as gr
import pytest
from gradio_client import Client

from studio.hosting import Hosting, redact
from studio.jobs import JobRunner, list_presets
from studio.train_config.base import TrainConfig
from studio.ui.jobs_tab import COMMON_FIELDS, build_jobs_tab, check_text, on_form_field
from tests.studio.ui import free_port


def test_common_fields_are_train_config_fields():
    assert set(COMMON_FIELDS) <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_a_form_widget_writes_its_field_by_name_into_the_json():
    text, check, cli = on_form_field("teachers")("distill", json.dumps({"steps": 5, "student": "vega"}),
                                                "assets/demo/teacher@2, assets/demo/teacher", "")
    assert json.loads(text) == {"steps": 5, "student": "vega", "teachers": [
        {"path": "assets/demo/teacher", "weight": 2.0}, {"path": "assets/demo/teacher", "weight": 1.0}]}
    assert check.startswith("✓ valid distill config: 5 steps")
    assert cli.startswith("python -m training.distill --config job.json")  # no preset: the JSON follows
    text, _, cli = on_form_field("lr")("distill", text, 0.01, "distill-demo-vega-5min")
    assert json.loads(text)["lr"] == 0.01 and "    --lr 0.01 \\" in cli.splitlines()
    assert on_form_field("lr")("distill", "{oops", 0.1, "")[1].startswith("✗ the config is not valid JSON")


def test_gpu_preset_on_this_machine_lists_what_is_missing():
    from studio.jobs import preset_config

    kind, config = preset_config("lora-sdxl")
    text = check_text(kind, config)
    assert text.startswith("✗ **Not ready on this machine**")
    assert "huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0" in text
    assert "data set folder `data/lora-images` is missing" in text


@pytest.fixture(scope="module")
def app(family, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-jobs")
    runner = JobRunner(root, slots=1, grace_s=30, env={"OMP_NUM_THREADS": "1"})
    with gr.Blocks() as demo:
        build_jobs_tab(runner=runner, watch=False, hosting=Hosting())  # local: the caller is an admin
    _, url, _ = demo.queue().launch(prevent_thread_lock=True, server_port=free_port(), quiet=True,
                                    allowed_paths=[str(root)])
    yield Client(url, verbose=False), runner, family["base"]
    demo.close()


def wait_status(client, job_id, done, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        client.predict(api_name="/jobs_list")  # polls the runner (the page's timer does the same)
        summary, *rest = client.predict(job_id, api_name="/jobs_status")
        if done(summary):
            return summary, *rest
        time.sleep(0.5)
    raise AssertionError(f"timed out; last summary: {summary}")


def test_preset_and_validation_before_launch(app):
    client, runner, teacher = app
    kind, config_text, *fields, check_md, cli = client.predict(list_presets()[0].name, api_name="/jobs_preset")
    config = json.loads(config_text)
    assert kind == "distill" and config["student"] == "vega" and fields[0] == config["steps"] == 250
    assert check_md.startswith("✓ valid distill config: 250 steps")
    assert cli == "python -m training.distill --config configs/distill-demo-vega-5min.toml"  # the command, first
    _, _, *_, check_md, _ = client.predict("distill-ssd1b-from-sdxl", api_name="/jobs_preset")
    assert check_md.startswith("✗") and "huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0" in check_md
    message, cli = client.predict("distill", json.dumps(config | {"steps": 300}), "distill-demo-vega-5min",
                                  api_name="/jobs_validate")
    assert cli.splitlines() == ["python -m training.distill --config configs/distill-demo-vega-5min.toml \\",
                                "    --steps 300"]
    message, _ = client.predict("distill", "{not json", api_name="/jobs_validate")
    assert "not valid JSON" in message
    bad = {"teachers": [{"path": str(teacher)}], "steps": 0}
    message, _ = client.predict("distill", json.dumps(bad), api_name="/jobs_validate")
    assert message.startswith("✗") and "steps must be an integer >= 1" in message
    with pytest.raises(Exception, match="steps must be an integer >= 1"):
        client.predict("distill", json.dumps(bad), "", api_name="/jobs_submit")
    # paths outside the studio's folders: one answer whether they exist or not, and no server path in it
    answers = {client.predict("distill", json.dumps({"teachers": [{"path": path}]}), api_name="/jobs_validate")[0]
               .replace(path, "P").replace(redact(path), "P") for path in ("/root", "/nonexistent", "/etc/passwd")}
    assert len(answers) == 1 and "outside the folders a job may read from" in answers.pop()
    message, _ = client.predict("distill", json.dumps({"teachers": "assets/demo/teacher@1,/tmp/x/teacher@1"}),
                                api_name="/jobs_validate")
    assert "'/tmp/x/teacher' is outside" in message and str(runner.root) not in message
    for text in ("[" * 100_000, "x" * 200_001, json.dumps({"steps": float("nan")})):
        message, _ = client.predict("distill", text, api_name="/jobs_validate")
        assert message.startswith("✗")
    assert runner.list() == []


def test_submit_stop_resume_status_and_delete_through_the_api(app):
    """Deterministic: the stop is scheduled at step 2 before the trainer has started (no race against the run)."""
    from studio.registry import list_models

    client, runner, teacher = app
    config = dict(teachers=[{"path": str(teacher)}], student="vega", buckets=[[32, 32]], dataset_count=8, steps=6,
                  batch_size=1, checkpoint_every=0, validate_every=3, validation_steps=2,
                  validation_prompts=["a red circle on a blue background"])
    message, selected, table = client.predict("distill", json.dumps(config), "ui student", api_name="/jobs_submit")
    job_id = selected if isinstance(selected, str) else selected["value"]
    assert job_id in message and table["data"][0][0] == job_id and "queued" not in message  # no status to go stale
    assert runner.status(job_id).owner == "ip:127.0.0.1"  # who submitted it (local mode: the machine's user)
    runner.cancel(job_id, at_step=2)  # what /jobs_cancel does, at a known step
    summary, *_ = client.predict(job_id, api_name="/jobs_status")
    assert "**cancelling**" in summary or "**cancelled**" in summary  # never "running" once a stop is asked for

    summary, *_, log, _, _ = wait_status(client, job_id, lambda s: "**cancelled**" in s)
    assert "step 2/6" in summary and "cancelled by the user; resume continues from checkpoint-2" in summary
    assert "None" not in log and "stopped on request at step 2/6: nothing exported" in log
    table = client.predict(api_name="/jobs_list")[0]
    assert [r[1] for r in table["data"] if r[0] == job_id] == ["cancelled"]
    assert runner.status(job_id).returncode == 0 and runner.status(job_id).signals_sent == 0  # graceful: STOP file

    client.predict(job_id, api_name="/jobs_resume")
    _, selected, _ = client.predict("distill", json.dumps(config | {"steps": 2}), "", api_name="/jobs_submit")
    queued = selected if isinstance(selected, str) else selected["value"]
    assert runner.status(queued).status == "queued"  # the slot is taken: it waits
    assert "cancelled before it started" in client.predict(queued, api_name="/jobs_cancel")
    summary, plot, image, log, files, command = wait_status(client, job_id, lambda s: "**finished**" in s)
    assert "registered as ui-student" in summary and "ui-student" in [s.name for s in list_models()]
    assert "--resume latest" in command
    assert plot is not None  # the figure itself: tests/studio/test_train_form.py
    assert image and image.endswith("step-000006.png")
    assert "done: 6 steps" in log
    assert any("resumed from" in line and "checkpoint-2 at step 2" in line for line in runner.log_tail(job_id, 400))
    assert any(f.endswith("diffusion_pytorch_model.safetensors") for f in files)

    client.predict(queued, api_name="/jobs_delete")
    client.predict(job_id, api_name="/jobs_delete")
    assert runner.list() == []


def test_the_app_has_the_train_tab_with_named_endpoints():
    from studio.ui import build_app

    names = {fn.api_name for fn in build_app().fns.values()}
    assert {"jobs_preset", "jobs_validate", "jobs_submit", "jobs_list", "jobs_status", "jobs_cancel", "jobs_resume",
            "jobs_delete"} <= names
