"""A studio process for the job-restart test: the app's JobRunner (``JobRunner()`` on ``<STUDIO_DATA_DIR>/jobs``, as
the Train tab builds it) living in a process of its own, so the test can kill it with SIGKILL and start another.

    python tests/studio/jobs_process.py submit CONFIG.json STOP_AT   # queue a distill job, schedule its stop, poll
    python tests/studio/jobs_process.py attach JOB_ID                # re-attach; wait for the end; resume; wait again

``submit`` prints ``{"job": id, "pid": trainer pid}`` and then polls like the app until it is killed. ``attach``
prints one JSON line per end it sees (the Job record, the metrics steps and the log tail).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from studio.jobs import JobRunner  # noqa: E402


def wait_end(runner: JobRunner, job_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while runner.poll_job(job_id).status in ("queued", "running"):
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {job_id}")
        time.sleep(0.2)
    return {"job": dataclasses.asdict(runner.status(job_id)), "steps": [r["step"] for r in runner.metrics(job_id)],
            "log": runner.log_tail(job_id, 400)}


def main(argv: list[str]) -> int:
    runner = JobRunner(slots=1, grace_s=120, env={"OMP_NUM_THREADS": "1"})
    if argv[0] == "submit":
        job_id = runner.submit("distill", json.loads(Path(argv[1]).read_text()), name="restarted")
        runner.cancel(job_id, at_step=int(argv[2]))  # a stop at a known step, scheduled before the trainer runs
        print(json.dumps({"job": job_id, "pid": runner.status(job_id).pid}), flush=True)
        while True:  # the app's poll loop, until SIGKILL
            runner.poll()
            time.sleep(0.2)
    job_id = argv[1]
    print(json.dumps({"attached": dataclasses.asdict(runner.status(job_id))}), flush=True)
    print(json.dumps(wait_end(runner, job_id)), flush=True)
    runner.resume(job_id)
    print(json.dumps(wait_end(runner, job_id)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
