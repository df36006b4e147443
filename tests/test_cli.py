"""The `audio-grpo` command: help everywhere, clear errors, exit codes."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from cli.main import subcommands


@pytest.mark.parametrize("command", [None, "make-tiny", "make-data", "check-data"])
def test_help_everywhere(command):
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0 and "usage: audio-grpo" in result.stdout


def test_every_subcommand_is_listed_in_the_top_level_help():
    listed = run_cli("--help").stdout
    names = [name for name, *_ in subcommands()]
    assert {"make-tiny", "make-data", "check-data", "prepare"} <= set(names)
    assert all(name in listed for name in names)


def test_make_data_then_check_data_strict(tmp_path):
    made = run_cli("make-data", str(tmp_path / "d"), "--n", "16", "--tasks", "pitch,count")
    assert made.returncode == 0, made.stderr
    checked = run_cli("check-data", str(tmp_path / "d" / "train.jsonl"), "--strict", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["kept"] == 14


def test_check_data_strict_fails_on_a_bad_row_and_names_it(tmp_path):
    run_cli("make-data", str(tmp_path / "d"), "--n", "8")
    train = tmp_path / "d" / "train.jsonl"
    train.write_text(train.read_text() + '{"id": 99, "multi_choice": ["a"], "answer": 0}\n')
    strict = run_cli("check-data", str(train), "--strict")
    assert strict.returncode == 2 and "needs 2 to 8 choices" in strict.stderr
    lenient = run_cli("check-data", str(train))
    assert lenient.returncode == 0 and "7 of 8 rows kept, 1 skipped" in lenient.stdout


def test_errors_are_one_clear_line_not_a_traceback(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = run_cli("make-tiny", str(tmp_path / "full"))
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("make-data", str(tmp_path / "d"), "--n", "4", "--tasks", "colour")
    assert result.returncode == 2 and "unknown task" in result.stderr


def test_serve_refuses_thinking_beside_a_run_dir(tmp_path):
    result = run_cli("serve", "--run-dir", str(tmp_path), "--thinking")
    assert result.returncode == 2 and "run's prompt.thinking applies" in result.stderr


def test_make_tiny_cli_writes_a_loadable_folder(tmp_path):
    result = run_cli("make-tiny", str(tmp_path / "m"), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
