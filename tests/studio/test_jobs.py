"""studio.jobs: pure helpers (transitions, log tail, end-of-run summary, metrics/ETA) and the runner driving real
``python -m training.distill`` subprocesses on the tiny pipeline (queue, restart + re-attach, kill -9, resume,
cancel, output registration, refusal of bad configs before any process starts)."""
import os
import shutil
import signal
import time

import psutil
import pytest

from studio.paths import DEMO_DIR
from studio.jobs import (JobRunner, MetricsLog, PathPolicy, check_transition, confine_config, estimate_progress,
                         prepare_config, read_metrics, summarize_end, tail_lines, validate_config)


def tiny_job(teacher, **overrides) -> dict:
    """A few-step distillation of the tiny pipeline at 32 px (seconds per step on one CPU thread)."""
    base = dict(teachers=[{"path": str(teacher)}], student="vega", buckets=[[32, 32]], dataset_count=8, steps=4,
                batch_size=1, checkpoint_every=0, validation_prompts=["a red circle on a blue background"],
                validation_steps=2, validate_every=0)
    return base | overrides


def wait_until(runner, predicate, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runner.poll()
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; jobs: {runner.list()}")


# ---------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("old,new,ok", [
    ("queued", "running", True), ("queued", "cancelled", True), ("running", "finished", True),
    ("running", "failed", True), ("running", "cancelled", True), ("failed", "queued", True),
    ("cancelled", "queued", True), ("finished", "queued", False), ("queued", "finished", False),
    ("failed", "running", False), ("cancelled", "finished", False)])
def test_status_transitions(old, new, ok):
    if ok:
        check_transition(old, new)
    else:
        with pytest.raises(ValueError, match=f"a {old} job cannot become {new}"):
            check_transition(old, new)


def test_tail_lines_collapses_progress_bar_updates():
    text = "a\nb\n  0%| 0/4\r 25%| 1/4\r 50%| 2/4\nerror: boom\n\n"
    assert tail_lines(text, 2) == [" 50%| 2/4", "error: boom"]
    assert tail_lines(text, 10) == ["a", "b", " 50%| 2/4", "error: boom"]
    assert tail_lines("", 3) == []


@pytest.mark.parametrize("rc,stopped,tail,output,status,words", [
    (0, False, ["done: 4 steps in 2s; student: x"], True, "finished", ["done: 4 steps"]),
    (-2, True, ["KeyboardInterrupt"], False, "cancelled", ["cancelled by the user"]),
    (-9, False, ["step 3"], False, "failed", ["SIGKILL", "out-of-memory killer"]),
    (2, False, ["error: DistillConfig.steps must be an integer >= 1"], False, "failed",
     ["config was rejected", "DistillConfig.steps"]),
    (3, False, ["error: non-finite loss (nan) at step 3"], False, "failed", ["non-finite loss", "lower lr"]),
    (3, False, ["error: LoraTrainConfig.dataset: 'x' is not an imagefolder"], False, "failed",
     ["stopped on an error (exit code 3)", "LoraTrainConfig.dataset"]),
    (1, False, ["Traceback", "torch.OutOfMemoryError: CUDA out of memory. Tried"], False, "failed",
     ["exit code 1", "out of memory", "torch.OutOfMemoryError"]),
    (1, False, ["FileNotFoundError: [Errno 2] No such file or directory: 'x'"], False, "failed",
     ["a file or folder is missing"]),
    (None, False, ["done: 4 steps in 2s"], True, "finished", ["done:"]),
    (None, False, ["  3/40"], False, "failed", ["no runner was attached"]),
])
def test_end_of_run_summary(rc, stopped, tail, output, status, words):
    """kohya #3585: a non-zero exit says why (exit code/signal + classified reason + the error line)."""
    got, message = summarize_end(rc, user_stopped=stopped, log_tail=tail, output_exists=output)
    assert got == status
    for w in words:
        assert w in message


def test_metrics_keep_the_replayed_step_and_eta_uses_the_latest_run(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,loss,lr,seconds\n1,1.0,0.1,1.0\n2,0.9,0.1,2.0\n3,0.8,0.1,3.0\n"  # killed after step 3
                   "3,0.7,0.1,0.5\n4,0.6,0.1,1.0\n5,0.5,0.1,1.5\n6,0.4")  # resumed from 2; last line half-written
    rows = read_metrics(log)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["loss"] == 0.7
    p = estimate_progress(rows, 10)
    assert p["step"] == 5 and p["loss"] == 0.5
    assert p["sec_per_step"] == pytest.approx(0.5) and p["eta_s"] == pytest.approx(2.5)
    assert estimate_progress([], 10)["eta_s"] is None


# ---------------------------------------------------------------- refusals (no process starts)

def test_bad_configs_are_refused_before_any_process_starts(tiny_folder, tmp_path):
    runner = JobRunner(tmp_path / "jobs", slots=1)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    for cfg, message in [({"steps": 0}, "steps must be an integer >= 1"),
                         ({"student": "nope"}, "neither a recipe"),
                         ({"bogus": 1}, "unknown field"),
                         ({"teachers": [{"path": str(tmp_path / "missing")}]}, "missing' does not exist; point"),
                         ({"teachers": [{"path": str(tmp_path)}]}, "is not a diffusers pipeline folder")]:
        with pytest.raises(ValueError, match=message):
            runner.submit("distill", tiny_job(tiny_folder) | cfg)
    with pytest.raises(ValueError, match="unknown job kind"):
        runner.submit("dreambooth", {})
    assert runner.list() == [] and not list((tmp_path / "jobs").glob("*/config.json"))
    assert {p.pid for p in psutil.Process().children(recursive=True)} == children
    assert validate_config("distill", tiny_job(tiny_folder))["steps"] == 4


def test_a_new_runner_fails_jobs_whose_process_is_gone_and_keeps_the_queue(tmp_path):
    """Restart after the studio died: a recorded pid that is now another process (start time differs) is not the
    job: failed with the reason; a live one is re-attached and holds the only slot, so the queued job waits."""
    import dataclasses
    import json

    from studio.jobs import Job

    root = tmp_path / "jobs"
    me = psutil.Process()
    records = [Job("a-gone", "distill", "a", status="running", submitted=1, pid=me.pid,
                   create_time=me.create_time() - 1000),
               Job("b-live", "distill", "b", status="running", submitted=2, pid=me.pid, create_time=me.create_time()),
               Job("c-queued", "distill", "c", status="queued", submitted=3, queued_at=3)]
    for job in records:
        (root / job.id).mkdir(parents=True)
        (root / job.id / "status.json").write_text(json.dumps(dataclasses.asdict(job)))
    runner = JobRunner(root, slots=1)
    gone, live, queued = runner.list()
    assert gone.status == "failed" and "no runner was attached" in gone.message and "no checkpoint" in gone.message
    assert live.status == "running" and queued.status == "queued"  # never cancel b-live: it is this process


# ---------------------------------------------------------------- real subprocesses

@pytest.fixture(scope="module")
def teacher(family):
    """The tiny pipeline registered as "tiny-base", so finished students name it as their base."""
    return family["base"]


def test_queue_kill_resume_cancel_and_registration(teacher, tmp_path):
    """One slot: job 1 runs, 2 and 3 queue. Cancel 3 while queued; 1 finishes and is registered; 2 starts only then;
    kill -9 of 2 is reported as failed with the reason; resume continues from its newest checkpoint; a stop scheduled
    at a known step ends it there with a checkpoint."""
    from studio.registry import list_models
    from studio.train_config.base import checkpoint_dirs

    root = tmp_path / "jobs"
    runner = JobRunner(root, slots=1, grace_s=60, env={"OMP_NUM_THREADS": "1"})
    j1 = runner.submit("distill", tiny_job(teacher, steps=3), name="Tiny Student 1")
    j2 = runner.submit("distill", tiny_job(teacher, steps=40, checkpoint_every=2))
    j3 = runner.submit("distill", tiny_job(teacher))
    assert [runner.status(j).status for j in (j1, j2, j3)] == ["running", "queued", "queued"]
    assert runner.cancel(j3).status == "cancelled" and runner.status(j3).runs == 0

    wait_until(runner, lambda: runner.status(j1).status != "running", what="job 1 to end")
    done = runner.status(j1)
    assert done.status == "finished", (done.message, runner.log_tail(j1))
    assert done.returncode == 0 and done.name == "tiny-student-1" and "registered as tiny-student-1" in done.message
    spec = next(s for s in list_models() if s.name == "tiny-student-1")
    assert spec.base == "tiny-base" and os.path.isfile(os.path.join(spec.source, "unet", "config.json"))
    assert runner.metrics(j1)[-1]["step"] == 3 and runner.progress(j1)["step"] == 3

    ckpt = root / j2 / "train" / "checkpoint-2" / "trainer_state.json"  # complete checkpoint
    wait_until(runner, lambda: ckpt.exists(), what="job 2's first checkpoint")
    second = runner.status(j2)
    assert second.status == "running" and second.started >= done.ended
    os.kill(second.pid, signal.SIGKILL)
    wait_until(runner, lambda: runner.status(j2).status != "running", what="job 2 to be reaped")
    failed = runner.status(j2)
    newest = checkpoint_dirs(root / j2 / "train")[-1].name
    assert failed.status == "failed" and failed.returncode == -9
    assert "SIGKILL" in failed.message and failed.message.endswith(f"resume continues from {newest}")

    resumed_at = int(newest.split("-")[1])
    assert runner.resume(j2).status == "running" and "--resume latest" in " ".join(runner.status(j2).command)
    runner.cancel(j2, at_step=resumed_at + 2)  # scheduled while the trainer still starts: it stops exactly there
    wait_until(runner, lambda: runner.status(j2).status != "running", what="job 2 to stop at its step")
    cancelled = runner.status(j2)
    assert cancelled.status == "cancelled" and cancelled.runs == 2 and cancelled.signals_sent == 0, cancelled.message
    assert cancelled.message.endswith(f"resume continues from checkpoint-{resumed_at + 2}")
    assert any(f"resumed from {root / j2 / 'train' / newest} at step {resumed_at}" in line
               for line in runner.log_tail(j2, 400))
    assert [r["step"] for r in runner.metrics(j2)] == list(range(1, resumed_at + 3))

    assert runner.resume(j3).status == "running"  # a queued-then-cancelled job can still run
    assert runner.cancel(j3, at_step=1, wait_s=120).status == "cancelled"
    assert runner.status(j3).message.endswith("resume continues from checkpoint-1")
    runner.delete(j3)
    assert [j.id for j in runner.list()] == [j1, j2]


def test_every_job_sees_only_its_own_gpu_and_the_app_hands_the_gpu_over_first(teacher, tmp_path, monkeypatch):
    """Item 8 of issue 14: each job gets CUDA_VISIBLE_DEVICES (one of the GPUs the studio may use), and the
    ``before_start`` hook (the app frees its GPU models) runs before the process starts and is noted in the status."""
    from studio.jobs.runner import gpu_handover, job_gpu
    from studio.loading import ModelCache

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the studio may use physical GPUs 3 and 5
    assert [job_gpu(slot) for slot in range(3)] == ["3", "5", "3"]
    calls = []
    runner = JobRunner(tmp_path / "jobs", slots=2, env={"OMP_NUM_THREADS": "1"},
                       before_start=lambda job: calls.append(job.slot) or f"GPU {job_gpu(job.slot)} freed")
    jobs = [runner.submit("distill", tiny_job(teacher, steps=200)) for _ in range(2)]
    try:
        assert calls == [0, 1] and [runner.status(j).message for j in jobs] == ["GPU 3 freed", "GPU 5 freed"]
        for j, gpu in zip(jobs, ("3", "5")):
            proc = psutil.Process(runner.status(j).pid)
            deadline = time.time() + 30
            while "training.distill" not in " ".join(proc.cmdline()) and time.time() < deadline:
                time.sleep(0.05)  # until the child has exec'd with its own environment
            assert proc.environ()["CUDA_VISIBLE_DEVICES"] == gpu
    finally:
        for j in jobs:
            runner.cancel(j, wait_s=60)
    cpu_cache = ModelCache()
    cpu_cache.get("tiny-base")
    assert gpu_handover(cpu_cache)(runner.status(jobs[0])) == "" and cpu_cache.loaded() == ["tiny-base"]


def test_the_app_restarts_and_reattaches_across_processes(teacher, tmp_path):
    """The studio dies (SIGKILL) while its job trains; a new studio process re-attaches to the job, sees it stop at
    the step its cancel named, resumes it and sees it finish and registers the student. No runner of this process
    is involved: each studio is a process of its own, as in real use."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("jobs_process.py")
    env = os.environ | {"STUDIO_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    config = tmp_path / "job.json"
    config.write_text(json.dumps(tiny_job(teacher, steps=6, checkpoint_every=2)))
    first = subprocess.Popen([sys.executable, str(script), "submit", str(config), "4"], env=env,
                             stdout=subprocess.PIPE, text=True)
    started = json.loads(first.stdout.readline())
    os.kill(first.pid, signal.SIGKILL)  # the studio dies; its job trains on (its own session)
    assert first.wait(30) == -signal.SIGKILL
    assert psutil.pid_exists(started["pid"])

    second = subprocess.run([sys.executable, str(script), "attach", started["job"]], env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    attached, stopped, finished = (json.loads(line) for line in second.stdout.splitlines())
    assert attached["attached"]["pid"] == started["pid"]  # re-attached: the same process, not failed or restarted
    job = stopped["job"]
    assert job["status"] == "cancelled" and job["returncode"] is None  # not the new studio's child: no exit code
    assert job["message"] == "cancelled by the user; resume continues from checkpoint-4"
    assert stopped["steps"] == [1, 2, 3, 4]
    job = finished["job"]
    assert job["status"] == "finished" and job["returncode"] == 0 and job["runs"] == 2, job["message"]
    assert "done: 6 steps" in job["message"] and job["message"].endswith("registered as restarted")
    assert finished["steps"] == [1, 2, 3, 4, 5, 6]
    assert any("at step 4" in line and "checkpoint-4" in line for line in finished["log"])
    assert (tmp_path / "data" / "models" / "restarted" / "unet" / "config.json").is_file()


def test_lora_job_is_registered_where_the_generate_tab_finds_loras(teacher, tmp_path):
    from studio.hosting import resolve_display_path
    from studio.ui.generate_tab import find_loras
    from studio.demo.shapes import export_imagefolder

    data = export_imagefolder(tmp_path / "shapes", 4, size=32)
    runner = JobRunner(tmp_path / "jobs", slots=1, env={"OMP_NUM_THREADS": "1"})
    job_id = runner.submit("lora", dict(base_model=str(teacher), dataset=str(data), buckets=[[32, 32]], steps=2,
                                        batch_size=1, rank=2, checkpoint_every=0), name="tiny-lora")
    wait_until(runner, lambda: runner.status(job_id).status != "running", what="the LoRA job")
    job = runner.status(job_id)
    assert job.status == "finished", (job.message, runner.log_tail(job_id))
    assert job.output.endswith("loras/tiny-lora") and "done: 2 steps" in job.message
    assert os.path.isfile(os.path.join(job.output, "pytorch_lora_weights.safetensors"))
    assert any(str(resolve_display_path(path)) == job.output for _, path in find_loras())  # listed as shown
    assert [p.name for p in runner.outputs(job_id)][:2] == ["pytorch_lora_weights.safetensors", "lora_config.json"]


def test_metrics_log_reads_appended_lines_and_rereads_a_rewritten_header(tmp_path):
    path = tmp_path / "log.csv"
    log = MetricsLog(path)
    assert log.rows() == []
    path.write_text("step,loss,seconds\n1,1.0,1.0\n2,0.9,")
    assert [r["step"] for r in log.rows()] == [1]  # the half-written line waits
    with open(path, "a") as f:
        f.write("2.0\n3,0.8,3.0\n")
    assert [(r["step"], r["loss"]) for r in log.rows()] == [(1, 1.0), (2, 0.9), (3, 0.8)]
    path.write_text("step,loss,seconds,val_student_all\n1,1.0,1.0,\n2,0.9,2.0,\n3,0.8,3.0,0.5\n")  # widened
    assert log.rows()[-1] == {"step": 3, "loss": 0.8, "seconds": 3.0, "val_student_all": 0.5}
    assert len(log.rows()) == 3


def policy_for(tmp_path, hf_datasets=None) -> PathPolicy:
    """Read from ``allowed/`` (holding a copy of the tiny teacher), write to ``cache/``."""
    (tmp_path / "allowed").mkdir(exist_ok=True)
    (tmp_path / "cache").mkdir(exist_ok=True)
    return PathPolicy((tmp_path / "allowed",), (tmp_path / "cache",), hf_datasets)


def outside_message(kind, config, policy) -> str:
    with pytest.raises(ValueError, match="outside the folders a job may") as err:
        confine_config(kind, config, policy)
    return str(err.value)


def test_every_path_field_is_confined_before_anything_looks_at_it(tiny_folder, tmp_path, monkeypatch):
    """Issue 13 (5): only strings starting with '/', '.' or '~' were checked; a teacher in a comma string, a
    cache_dir walking out with '..' and hf: data sets went through, and validation told whether an outside path
    existed. Now every path field is resolved and refused outside the folders, whatever exists there."""
    policy = policy_for(tmp_path)
    inside = tmp_path / "allowed" / "teacher"
    shutil.copytree(tiny_folder, inside)
    outside = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(tiny_folder, outside)
    # a comma string with one outside teacher, both as the issue gave it and as a list
    for teachers in (f"{inside}@1,{outside}@1", [{"path": str(inside)}, {"path": str(outside)}], [str(outside)],
                     f"{inside}@1,{inside}/../../elsewhere/teacher@1", [{"path": "assets/../../x"}],
                     "assets/demo/teacher@1,/tmp/x/teacher@1"):
        assert "teachers" in outside_message("distill", {"teachers": teachers}, policy)
    ok = {"teachers": [{"path": str(inside)}]}
    # a symlink inside the roots pointing outside
    (tmp_path / "allowed" / "link").symlink_to(outside)
    outside_message("distill", {"teachers": [{"path": str(tmp_path / "allowed" / "link")}]}, policy)
    # cache_dir walking out: refused, and no folder appears anywhere
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for cache in ("nonexist/../../somewhere", f"{tmp_path}/cache/../../x", "~/.cache/studio", "/tmp", str(inside),
                  "<data>/../x", "<hf cache>/x"):
        assert "cache_dir" in outside_message("distill", ok | {"cache_dir": cache}, policy)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    for field, value in (("dataset", "/etc"), ("dataset", "hf:/etc"), ("dataset", "hf:../elsewhere"),
                         ("student", str(outside.parent)), ("base_model", str(outside)), ("init_lora", "/etc/passwd"),
                         ("kd_teacher", "../elsewhere/teacher"), ("kd_teacher_lora", "~/lora.safetensors"),
                         ("init_lora", "<outside the studio's folders>/x")):
        kind = "distill" if field in ("student",) else "lora"
        if field == "dataset":
            assert field in outside_message("distill", ok | {field: value}, policy)
        assert field in outside_message(kind, (ok if kind == "distill" else {}) | {field: value}, policy)
    # the answer never depends on whether the outside path exists
    there, missing = (outside_message("distill", {"teachers": [{"path": p}]}, policy)
                      for p in (str(outside), str(tmp_path / "elsewhere" / "nothing")))
    assert there.replace(str(outside), "P") == missing.replace(str(tmp_path / "elsewhere" / "nothing"), "P")
    # inside: resolved to absolute paths, names and recipes untouched
    confined = confine_config("distill", {"teachers": f"{inside}/.@2", "cache_dir": str(tmp_path / "cache" / "c"),
                                          "student": "vega", "dataset": "demo"}, policy)
    assert confined["teachers"] == [{"path": str(inside), "weight": 2.0}] and confined["student"] == "vega"
    assert confined["cache_dir"] == str(tmp_path / "cache" / "c") and confined["dataset"] == "demo"
    assert confine_config("lora", {"base_model": "demo-teacher", "dataset": "demo:orange"}, policy)["base_model"] \
        == "demo-teacher"
    # relative paths are under the repository (as the studio shows them), whatever the working folder; the default
    # teacher (not given) is confined too
    monkeypatch.chdir(tmp_path)
    assert "teachers" in outside_message("distill", {}, policy)
    assert confine_config("distill", {}, PathPolicy.default())["teachers"][0]["path"] == str(DEMO_DIR / "teacher")


def test_hub_data_sets_only_from_the_allow_list_in_public_mode(tmp_path):
    public = policy_for(tmp_path, hf_datasets=frozenset({"lambdalabs/pokemon"}))
    with pytest.raises(ValueError, match=r"hub data set 'someone/secret' is not one this studio allows "
                                         r"\(STUDIO_HF_DATASETS: lambdalabs/pokemon\)"):
        confine_config("lora", {"dataset": "hf:someone/secret"}, public)
    ok = confine_config("lora", {"dataset": "hf:lambdalabs/pokemon"}, public)
    assert ok["dataset"] == "hf:lambdalabs/pokemon"
    local = policy_for(tmp_path)
    assert confine_config("lora", {"dataset": "hf:someone/any"}, local)["dataset"] == "hf:someone/any"
    for bad in ("hf:/etc", "hf:~", "hf:a/../../b"):
        with pytest.raises(ValueError, match="outside the folders a job may read from"):
            confine_config("lora", {"dataset": bad}, local)


def test_a_config_that_checks_also_submits(family, tmp_path):
    """Issue 13 (7): a string over 255 characters made /jobs_submit fail with OSError: File name too long while
    /jobs_validate said valid. Both now run `prepare_config`: the same answer, a ValueError naming the field."""
    runner = JobRunner(tmp_path / "jobs", slots=1)
    policy = PathPolicy.default()
    for field, value in (("dataset", "d" * 300), ("cache_dir", "c" * 256), ("student", "s/" * 600),
                         ("teachers", [{"path": "t" * 300}]), ("validation_prompts", ["p" * 3000])):
        config = tiny_job(family["base"]) | {field: value}
        with pytest.raises(ValueError, match=field) as checked:
            prepare_config("distill", config, output_dir=tmp_path / "x", policy=policy)
        with pytest.raises(ValueError) as submitted:
            runner.submit("distill", config, policy=policy)
        assert str(submitted.value) == str(checked.value)
    assert runner.list() == []


def test_submit_records_the_owner_caps_the_queue_and_freezes_resolved_paths(tiny_folder, tmp_path):
    import json

    policy = policy_for(tmp_path)
    shutil.copytree(tiny_folder, tmp_path / "allowed" / "teacher")
    runner = JobRunner(tmp_path / "jobs", slots=1)
    runner.slots = 0  # no slot: nothing starts, the jobs stay queued
    config = tiny_job(tmp_path / "allowed" / "teacher" / ".." / "teacher") | {"cache_dir": str(tmp_path / "cache" / "x")}
    first = runner.submit("distill", config, policy=policy, owner="ip:203.0.113.1", max_queued=2)
    runner.submit("distill", config, policy=policy, owner="ip:203.0.113.2", max_queued=2)
    with pytest.raises(ValueError, match="the job queue is full: 2 jobs are queued or running and this studio takes "
                                         "at most 2"):
        runner.submit("distill", config, policy=policy, owner="ip:203.0.113.3", max_queued=2)
    assert runner.status(first).owner == "ip:203.0.113.1" and len(runner.list()) == 2
    frozen = json.loads((runner.job_dir(first) / "config.json").read_text())
    assert frozen["teachers"][0]["path"] == str(tmp_path / "allowed" / "teacher")
    runner.cancel(first)
    with pytest.raises(ValueError, match="queue is full"):
        runner.submit("distill", config, policy=policy, max_queued=1)
    with pytest.raises(ValueError, match="queue is full"):
        runner.resume(first, max_queued=1)
    assert runner.status(first).status == "cancelled"
    for bad in ("../x", ".hidden", "a/b", "x" * 200, "", None, 5):
        with pytest.raises(ValueError, match="bad job id"):
            runner.status(bad)
    with pytest.raises(ValueError, match="^no job 'nope'$"):  # the message names no server folder
        runner.status("nope")
