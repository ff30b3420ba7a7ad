"""Training jobs: presets (``configs/*.toml``), the subprocess runner, and what a job's files say.

    runner = JobRunner()
    kind, config = preset_config("distill-demo-vega-5min")
    job_id = runner.submit(kind, config)

    presets   the config files the Train tab lists
    kinds     per job kind: validation (studio.train_config), command line, exported output, allowed paths
    runner    JobRunner: queue, processes, cancel / resume, re-attach after a restart, output registration
    status    pure helpers: transitions, log tail, end-of-run summary, metrics CSV, progress / ETA
"""
from studio.jobs.kinds import (KINDS, PathPolicy, command_line, confine_config, final_output, prepare_config,
                               validate_config)
from studio.jobs.presets import DEFAULT_PRESET, Preset, list_presets, preset_config
from studio.jobs.runner import Job, JobRunner
from studio.jobs.status import (LOSS_KEYS, MetricsLog, check_transition, estimate_progress, format_seconds,
                                read_log_tail, read_metrics, summarize_end, tail_lines)

__all__ = ["DEFAULT_PRESET", "KINDS", "LOSS_KEYS", "Job", "JobRunner", "MetricsLog", "PathPolicy", "Preset",
           "check_transition", "command_line", "confine_config", "estimate_progress", "final_output", "format_seconds",
           "list_presets", "prepare_config", "preset_config", "read_log_tail", "read_metrics", "summarize_end",
           "tail_lines", "validate_config"]
