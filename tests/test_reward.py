"""R1-AQA's rewards, the `reward` command, MMAU's metric and the `score` command."""

from __future__ import annotations

import json

import pytest
from helpers import SHARED_DATA, run_cli

from reward.mmau import mmau_match, mmau_scores
from reward.rewards import (
    RewardScorer,
    RewardWeights,
    accuracy_reward,
    extract_answer,
    format_reward,
    summarize_scores,
)


@pytest.mark.parametrize(
    ("response", "answer", "accuracy", "fmt"),
    [
        ("<answer>Man</answer>", "Man", 1.0, 1.0),
        ("<answer> Man </answer>", "Man", 1.0, 1.0),  # stripped
        ("<answer>man</answer>", "Man", 0.0, 1.0),  # case-sensitive
        ("Man", "Man", 1.0, 0.0),  # no tag: the whole response is the answer
        ("  Man\n", "Man", 1.0, 0.0),
        ("I hear <answer>Man</answer>", "Man", 1.0, 0.0),  # right answer, text outside the tag
        ("<answer>Man</answer> and <answer>Woman</answer>", "Man", 1.0, 1.0),  # first span wins
        ("<answer>Woman</answer><answer>Man</answer>", "Man", 0.0, 1.0),
        ("<answer>Ma\nn</answer>", "Ma\nn", 0.0, 1.0),  # no DOTALL: a 2-line span is not a span
        ("<answer>Man</answer>\n", "Man", 1.0, 0.0),  # full match: a trailing newline breaks format
        ("<answer>Man", "Man", 0.0, 0.0),
        ("", "Man", 0.0, 0.0),
    ],
)
def test_r1_aqa_accuracy_and_format(response, answer, accuracy, fmt):
    assert accuracy_reward(response, answer) == accuracy
    assert format_reward(response) == fmt


def test_thinking_format_variant():
    good = "<think>high pitch, so</think>\n <answer>high</answer>"
    assert format_reward(good, thinking=True) == 1.0 and format_reward(good) == 0.0
    assert format_reward("<answer>high</answer>", thinking=True) == 0.0
    assert extract_answer(good) == "high"


def test_weights_combine_the_two_rewards():
    scorer = RewardScorer(RewardWeights(accuracy=2.0, format=0.5))
    (right, wrong_format) = scorer.score(["<answer>a</answer>", "a"], ["a", "a"])
    assert right.total == 2.5 and wrong_format.total == 2.0
    with pytest.raises(ValueError):
        scorer.score(["x"], [])
    summary = summarize_scores([right, wrong_format])
    assert summary == {"reward_mean": 2.25, "accuracy": 1.0, "format_rate": 0.5}


def test_reward_command_keeps_order_and_survives_bad_lines():
    lines = [
        {"response": "<answer>high</answer>", "answer": "high"},
        "not json at all",
        {"response": "low", "answer": "high"},
        {"answer": "high"},
        {"response": "<think>x</think><answer>low</answer>", "answer": "low"},
    ]
    stdin = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    result = run_cli("reward", stdin=stdin)
    assert result.returncode == 0
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert out[0] == {"accuracy": 1.0, "format": 1.0}
    assert "error" in out[1] and "line 2" in out[1]["error"]
    assert out[2] == {"accuracy": 0.0, "format": 0.0}
    assert "error" in out[3]
    assert out[4] == {"accuracy": 1.0, "format": 0.0}
    thinking = run_cli("reward", "--thinking", stdin=json.dumps(lines[4]) + "\n")
    assert json.loads(thinking.stdout) == {"accuracy": 1.0, "format": 1.0}


@pytest.mark.parametrize(
    ("prediction", "answer", "choices", "correct"),
    [
        ("Man", "Man", ["Man", "Woman"], True),
        ("the answer is man.", "Man", ["Man", "Woman"], True),  # lower-cased word tokens
        ("Woman", "Man", ["Man", "Woman"], False),
        ("Man or Woman", "Man", ["Man", "Woman"], False),  # holds a wrong-only token
        ("", "Man", ["Man", "Woman"], False),
        ("Dog barking", "Dog barking", ["Dog barking", "Dog growling"], True),  # shared 'dog' is fine
        ("Dog", "Dog barking", ["Dog barking", "Dog growling"], False),  # must hold every answer token
        ("<answer>Piano</answer>", "Piano", ["Piano", "Guitar"], True),  # tags are not word tokens
    ],
)
def test_mmau_official_match(prediction, answer, choices, correct):
    assert mmau_match(prediction, answer, choices) is correct


def test_score_command_on_mmau_test_mini(tmp_path):
    items = json.loads((SHARED_DATA / "mmau-test-mini-v2025-01.json").read_text())
    for i, item in enumerate(items):  # right on every item but every fourth; 10 without a prediction
        if i < 10:
            continue
        key = "model_output" if i % 2 else "model_prediction"
        wrong = next(c for c in item["choices"] if c != item["answer"]) if i % 4 == 0 else None
        item[key] = wrong if wrong is not None else item["answer"]
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(items))
    expected = mmau_scores(items)
    result = run_cli("score", str(path), "--json")
    assert result.returncode == 0 and "10 items have no" in result.stderr
    scores = json.loads(result.stdout)
    assert scores["n"] == 1000 and scores["missing_predictions"] == 10
    assert set(scores["task"]) == {"sound", "music", "speech"}
    assert set(scores["difficulty"]) == {"easy", "medium", "hard"}
    assert len(scores["sub_category"]) > 10
    assert scores == {k: v for k, v in expected.items() if k != "missing_ids"}
    # Hand count: of the 990 predicted items, every fourth index (i % 4 == 0) names a wrong choice,
    # except items whose "wrong" choice repeats the answer's words (MMAU's duplicates).
    assert 72.0 <= scores["total"] <= 76.0
    table = run_cli("score", str(path))
    assert "MMAU accuracy:" in table.stdout and "sound" in table.stdout
