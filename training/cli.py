"""What every training CLI shares: ``--config``, overrides by field name, ``--resume``, a progress bar and the one
``done:`` / ``error:`` line the job runner reads.

    p = cli_parser("python -m training.distill", "…", "DistillConfig")
    args, extra = p.parse_known_args(argv)
    built = trainer_from_cli(args, extra, DistillConfig.load, make_trainer)   # None after an ``error:`` line
    return run_with_progress(trainer, args.resume, ("loss", "task"), lambda r: f"student: {r.output}")
"""
from __future__ import annotations

import argparse
import json
import sys

from training.trainer import NonFiniteLossError, Trainer


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: list[str], extra: list[str]) -> dict:
    """``--set a=1 b=x`` and ``--a 1 --b x`` -> {"a": 1, "b": "x"} (values parsed as JSON when they parse)."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"--set expects field=value; got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = _value(v)
    i = 0
    while i < len(extra):
        if not extra[i].startswith("--"):
            raise ValueError(f"unexpected argument {extra[i]!r}")
        key = extra[i][2:]
        if "=" in key:
            key, v = key.split("=", 1)
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            v, i = extra[i + 1], i + 2
        else:
            v, i = "true", i + 1
        out[key.replace("-", "_")] = _value(v)
    return out


def cli_parser(prog: str, description: str, config_name: str) -> argparse.ArgumentParser:
    """The training CLIs' shared options: --config, --set FIELD=VALUE, --resume (and --<field> VALUE, see
    ``trainer_from_cli``)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                epilog="Any config field can be overridden as --<field> VALUE (JSON values parse).")
    p.add_argument("--config", default=None, help=f"TOML or JSON file with {config_name} fields")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="overrides by field name")
    p.add_argument("--resume", default=None, help="checkpoint folder or 'latest'")
    return p


def trainer_from_cli(args, extra: list[str], load_config, make_trainer):
    """(config, trainer) from ``cli_parser``'s options and the extra ``--<field> VALUE`` pairs; None after one
    ``error:`` line when the config is refused (the CLI exits with 2)."""
    try:
        cfg = load_config(args.config, parse_overrides(args.set, extra))
        return cfg, make_trainer(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def run_with_progress(trainer: Trainer, resume_from: str | None, postfix_keys: tuple[str, ...], output) -> int:
    """A CLI's run: a tqdm bar showing ``postfix_keys`` of the step info, then one ``done:`` line (``output(result)``
    names what was written; studio.jobs reads this line) -> exit code 0; or one ``error:`` line for a non-finite
    loss or a bad input found while running -> 3."""
    from tqdm import tqdm

    bar = tqdm(total=trainer.config.steps, unit="step", disable=not trainer.accelerator.is_main_process)

    def on_step(step, total, info):
        bar.n = step
        bar.set_postfix({k: f"{v:.4g}" for k, v in info.items() if k in postfix_keys})
        bar.refresh()

    try:
        result = trainer.run(resume_from=resume_from, on_step=on_step)
    except (NonFiniteLossError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        bar.close()
    what = output(result) if result.output is not None else \
        f"stopped on request at step {result.steps_done}/{trainer.config.steps}: nothing exported (resume continues)"
    print(f"done: {result.steps_done} steps in {result.seconds:.0f}s; {what}; last checkpoint: {result.checkpoint}")
    return 0
