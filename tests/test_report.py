"""`audio-grpo report`: runs side by side in one table and one picture, from their run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from cluster.report import read_run


def fake_run(root: Path, name: str, kind: str, accuracy_by_step: dict[int, float]) -> Path:
    """A run directory as train/sft write it: config.yaml, metrics.jsonl, eval/step-N.json (MMAU
    items whose predictions are right for the given share)."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\n")
    last = max(accuracy_by_step)
    lines = []
    for step in range(1, last + 1):
        record = {"step": step, "step_s": 1.5, "data_position": 8 * step, "loss": 0.1}
        record.update({"reward_mean": 1.0} if kind == "grpo" else {})
        record.update(
            {"learner_s": 1.0, "learner_forward_s": 0.2 + 0.1 * (step % 2), "learner_backward_s": 0.4}
        )
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for step, accuracy in accuracy_by_step.items():
        items = []
        for i in range(20):
            right = i < accuracy * 20 / 100
            items.append(
                {
                    "id": f"q{i}", "task": "sound" if i % 2 else "music", "difficulty": "easy",
                    "choices": ["high", "low"], "answer": "high", "model_output": "high" if right else "low",
                }
            )  # fmt: skip
        (run / "eval" / f"step-{step}.json").write_text(json.dumps(items))
    return run


def test_report_sets_runs_side_by_side(tmp_path):
    grpo = fake_run(tmp_path, "grpo-run", "grpo", {10: 50.0, 20: 80.0, 30: 70.0})
    sft = fake_run(tmp_path, "sft-run", "sft", {10: 60.0, 20: 65.0})
    summary = read_run(grpo)
    assert (summary.kind, summary.best, summary.last) == ("grpo", 20, 30)
    assert summary.seen[20] == 160 and summary.seconds[20] == pytest.approx(30.0)
    done = run_cli("report", str(grpo), str(sft), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    table = text.split("\n\n")[0].splitlines()
    assert table[0].startswith("| run | kind | point | step | MMAU % | music | sound | easy |")
    rows = [line.split(" | ") for line in table[2:]]
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        ("| grpo-run", "best", "20", "80.0"),
        ("| grpo-run", "last", "30", "70.0"),
        ("| sft-run", "best", "20", "65.0"),
        ("| sft-run", "last", "20", "65.0"),
    ]
    # Where a step goes: the learner's split, averaged over the steps; "-" for what was not logged.
    split = text.split("Where a step goes")[1].splitlines()
    assert split[2].startswith("| run | generate | reward | learner | reference | forward | backward |")
    grpo_split = split[4].split(" | ")
    assert grpo_split[:2] == ["| grpo-run", "-"] and float(grpo_split[3]) == 1.0
    assert float(grpo_split[5]) == pytest.approx(0.25, abs=2e-3) and float(grpo_split[6]) == 0.4
    assert (tmp_path / "out" / "report.png").stat().st_size > 10_000
    not_a_run = run_cli("report", str(tmp_path / "nothing"))
    assert not_a_run.returncode == 2 and "not a run directory" in not_a_run.stderr
