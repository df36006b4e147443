"""MMAU's official metric (its evaluation.py), and the breakdown it reports.

Not exact match: prediction and answer are lower-cased and split into word tokens (\\b\\w+\\b); a
prediction is correct when it holds every token of the answer and no token that belongs only to a
wrong choice; an empty prediction is wrong. Unlike the official script, which silently skips items
without a prediction, we count them as wrong and report how many there were.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

_WORD = re.compile(r"\b\w+\b")
PREDICTION_KEYS = ("model_output", "model_prediction")


def _tokens(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def mmau_match(prediction: str, answer: str, choices: list[str]) -> bool:
    predicted, expected = _tokens(prediction), _tokens(answer)
    if not predicted:
        return False
    wrong_only: set[str] = set()
    for choice in choices:
        tokens = _tokens(choice)
        if tokens != expected:
            wrong_only |= tokens - expected
    return expected <= predicted and predicted.isdisjoint(wrong_only)


def prediction_of(item: dict[str, Any]) -> str | None:
    """The item's prediction (`model_output`, else `model_prediction`), or None when absent."""
    for key in PREDICTION_KEYS:
        value = item.get(key)
        if isinstance(value, str):
            return value
    return None


def _percent(hits: int, count: int) -> float:
    return round(100.0 * hits / count, 2) if count else 0.0


def mmau_scores(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy in percent overall, per task, per difficulty and per sub-category."""
    groups: dict[str, dict[str, list[int]]] = {
        k: defaultdict(lambda: [0, 0]) for k in ("task", "difficulty", "sub_category")
    }
    hits, missing = 0, []
    for item in items:
        prediction = prediction_of(item)
        if prediction is None:
            missing.append(item.get("id"))
        correct = prediction is not None and mmau_match(prediction, item["answer"], item["choices"])
        hits += correct
        for group, key in (("task", "task"), ("difficulty", "difficulty"), ("sub_category", "sub-category")):
            if key in item:
                cell = groups[group][str(item[key])]
                cell[0] += correct
                cell[1] += 1
    result: dict[str, Any] = {"total": _percent(hits, len(items))}
    for group, cells in groups.items():
        result[group] = {name: _percent(h, n) for name, (h, n) in sorted(cells.items())}
    result["n"] = len(items)
    result["missing_predictions"] = len(missing)
    result["missing_ids"] = missing
    return result


def format_scores(scores: dict[str, Any]) -> str:
    """A plain-text table of `mmau_scores`."""
    lines = [
        f"MMAU accuracy: {scores['total']:.2f}% of {scores['n']} items"
        + (
            f" ({scores['missing_predictions']} without a prediction, counted wrong)"
            if scores["missing_predictions"]
            else ""
        )
    ]
    for group in ("task", "difficulty", "sub_category"):
        if scores[group]:
            lines.append(f"{group}:")
            lines += [f"  {name:<40} {value:6.2f}%" for name, value in scores[group].items()]
    return "\n".join(lines)
