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
        # No DOTALL: a 2-line span is not a span, in the response or the solution: R1-AQA then
        # compares the whole texts, which are equal here.
        ("<answer>Ma\nn</answer>", "Ma\nn", 1.0, 1.0),
        ("<answer>Man</answer>\n", "Man", 1.0, 0.0),  # full match: a trailing newline breaks format
        ("<answer>Man", "Man", 0.0, 0.0),
        ("", "Man", 0.0, 0.0),
    ],
)
def test_r1_aqa_accuracy_and_format(response, answer, accuracy, fmt):
    assert accuracy_reward(response, answer) == accuracy == accuracy_reward(response, answer, "exact")
    assert format_reward(response) == fmt


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("<ANSWER>6.40 - 8.00</ANSWER>", "6.40 - 8.00"),  # another tag case
        ("<answer>'6.40 - 8.00'</answer>", "6.40 - 8.00"),  # quoted
        ("<answer>14.40s to 16.00s", "14.40s to 16.00s"),  # no closing tag
        ("<answer>4.80 - 7.20.</answer>", "4.80 - 7.20"),  # a trailing period
        ("<answer>major 7th chord, G</answer>", "Major 7th chord, G"),  # another letter case
    ],
)
def test_r1aqa_rule_matches_symbolically_where_the_tag_match_does_not(response, answer):
    assert accuracy_reward(response, answer) == 1.0  # the default: R1-AQA's rule
    assert accuracy_reward(response, answer, "exact") == 0.0


def r1aqa_reference(content: str, choice: str) -> float:
    """R1-AQA's `accuracy_reward` for one response, step by step as its code runs (solution
    `<answer>choice</answer>`; symbolic check, then the tag match)."""
    import re

    from math_verify import parse, verify

    solution = f"<answer>{choice}</answer>"
    try:
        if float(verify(parse(content), parse(solution))) > 0:
            return 1.0
    except Exception:  # noqa: BLE001
        pass
    truth = re.search(r"<answer>(.*?)</answer>", solution)
    student = re.search(r"<answer>(.*?)</answer>", content)
    truth = truth.group(1).strip() if truth else solution.strip()
    return 1.0 if (student.group(1).strip() if student else content.strip()) == truth else 0.0


def random_response(rng, choices: list[str], answer: str) -> str:
    """A response a policy might write: the right or a wrong choice (or a number near it), with
    tag case, quotes, punctuation, spacing, a missing closing tag, thinking or chatter."""
    said = rng.choice([answer, answer, rng.choice(choices), answer.lower(), answer.upper()])
    if rng.random() < 0.2 and any(c.isdigit() for c in said):
        said = said.replace(".0", ".00") if rng.random() < 0.5 else said.replace("0", "1", 1)
    said = rng.choice(["", "'", '"', " "]) + said + rng.choice(["", ".", "'", " s", " seconds"])
    open_tag, close_tag = rng.choice([("<answer>", "</answer>"), ("<ANSWER>", "</ANSWER>"), ("<answer>", "")])
    body = rng.choice(
        ["{o}{s}{c}", "<think>it is {s}</think>\n{o}{s}{c}", "The answer is {s}", "{o}\n{s}{c}"]
    )
    return body.format(o=open_tag, s=said, c=close_tag)


def test_r1aqa_rule_agrees_with_r1aqa_code_on_random_responses():
    """100% agreement with R1-AQA's accuracy reward (its steps, the same math-verify) on 1500
    random responses to multiple-choice questions with words, numbers and time ranges."""
    import random

    rng = random.Random(0)
    pools = [
        ["Man", "Woman", "Child", "Nobody"],
        ["6.40 - 8.00", "4.80 - 7.20", "0.00 - 1.60", "14.40 - 16.00"],
        ["2", "3", "4", "5"],
        ["Major 7th chord", "minor chord", "Dominant 7th chord", "diminished"],
        ["1.5s", "3s", "10 seconds", "0.5s"],
    ]
    disagreements = []
    for _ in range(1500):
        choices = rng.choice(pools)
        answer = rng.choice(choices)
        response = random_response(rng, choices, answer)
        ours, theirs = accuracy_reward(response, answer), r1aqa_reference(response, answer)
        if ours != theirs:
            disagreements.append((response, answer, ours, theirs))
    assert not disagreements, disagreements[:5]


def test_r1aqa_rule_refuses_to_run_off_the_main_thread():
    """math-verify's timeouts use SIGALRM (main thread only): elsewhere every check would fail and
    score 0 silently, so the rule stops with a clear error instead."""
    import threading

    errors = []
    thread = threading.Thread(
        target=lambda: errors.append(_error(lambda: accuracy_reward("<answer>9.10</answer>", "9.1")))
    )
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0]


def _error(call) -> str:
    try:
        call()
    except RuntimeError as err:
        return str(err)
    return ""


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
    assert scores == {**{k: v for k, v in expected.items() if k != "missing_ids"}, "metric": "accuracy"}
    # Hand count: of the 990 predicted items, every fourth index (i % 4 == 0) names a wrong choice,
    # except items whose "wrong" choice repeats the answer's words (MMAU's duplicates).
    assert 72.0 <= scores["total"] <= 76.0
    table = run_cli("score", str(path))
    assert "MMAU accuracy:" in table.stdout and "sound" in table.stdout
