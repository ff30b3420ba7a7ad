"""training.demo_report: the committed numbers are the report's: every table in the README and the model cards is
what ``python -m training.demo_family report --tables-only`` renders from the committed eval.json files."""
from __future__ import annotations

import json

import pytest

from studio.paths import DEMO_DIR
from training.demo_card import REPORT_END, REPORT_START
from training.demo_report import COMMAND, HEAD, LORAS, SETTINGS, STUDENTS, blocks, read_eval_files, replace_block


def block_of(text: str, name: str) -> list[str]:
    start = text.index(REPORT_START.format(name)) + len(REPORT_START.format(name)) + 1
    return text[start:text.index(REPORT_END, start)].rstrip("\n").split("\n")


def test_replace_block_keeps_the_text_around_it():
    x, y = REPORT_START.format("x"), REPORT_START.format("y")
    text = f"intro\n{x}\nold\n{REPORT_END}\noutro\n{y}\nkeep\n{REPORT_END}\n"
    out = replace_block(text, "x", ["| a |", "| b |"])
    assert out == text.replace("old", "| a |\n| b |")
    with pytest.raises(ValueError, match="no '<!-- report:z"):
        replace_block(text, "z", [])


def test_eval_files_come_from_one_report_run():
    files = [DEMO_DIR / f / "eval.json" for f in ("teacher", *STUDENTS, "loras")]
    heads = [{k: json.loads(f.read_text())[k] for k in HEAD} for f in files]
    assert all(h == heads[0] for h in heads) and heads[0]["command"] == COMMAND
    assert heads[0]["settings"] == SETTINGS
    result = read_eval_files()
    assert set(result["loras"]) == set(LORAS)
    assert result["family"]["demo-teacher"]["n"] == SETTINGS["n"]
    for folder in STUDENTS:  # every student row of the family table, on the same prompts
        rows = [r for r in result["family"].values() if r["student"] == folder]
        assert {r["kind"] for r in rows} == {"kd", "task_only", "undistilled"}
        assert {r["n"] for r in rows} == {SETTINGS["n"]} and len({r["unet_params"] for r in rows}) == 1


def test_committed_tables_are_the_reports():
    for path, named in blocks(read_eval_files()).items():
        text = path.read_text()
        for name, lines in named.items():
            assert block_of(text, name) == lines, f"{path}: block {name!r} differs from the eval.json files"
