"""R1-AQA's rule-based rewards, exactly as its public code computes them.

- accuracy, rule `r1aqa` (the default; R1-AQA's `accuracy_reward`): first a symbolic check with the
  `math-verify` package (`parse` of the whole response against `parse` of the solution
  `<answer>choice</answer>`, then `verify`; any exception is no match), then the tag match below.
  The symbolic step matches answers the tag match does not: `<ANSWER>6.40 - 8.00</ANSWER>`,
  `<answer>'6.40 - 8.00'</answer>`, an unclosed `<answer>14.40s to 16.00s`, `<answer>4.80 - 7.20.`
  `</answer>`, another letter case; and a number inside an answer can match symbolically.
- accuracy, rule `exact` (stdlib only): the text inside the first `<answer>...</answer>` (no DOTALL:
  the span must sit on one line; if there is none, the whole response), stripped, compared
  case-sensitively with the ground truth taken from the solution the same way: 1.0 or 0.0.
- format: 1.0 iff the whole response fully matches `<answer>.*?</answer>` (DOTALL); the thinking
  variant requires `<think>.*?</think>\\s*<answer>.*?</answer>`.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from typing import Literal

AccuracyRule = Literal["r1aqa", "exact"]

_ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>")
_FORMAT = re.compile(r"<answer>.*?</answer>", re.DOTALL)
_THINKING_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def answer_tag(choice: str) -> str:
    """A response in the rewarded format: `<answer>choice</answer>`."""
    return f"<answer>{choice}</answer>"


def rewarded_response(choice: str, *, thinking: bool = False, reasoning: str = "") -> str:
    """A response that earns the format reward (of the thinking variant with `thinking`) and names
    `choice`: what SFT targets and the warm start teach."""
    return f"<think>{reasoning}</think> {answer_tag(choice)}" if thinking else answer_tag(choice)


def extract_answer(response: str) -> str:
    """The answer a response gives: the first one-line `<answer>` span, else the whole text, stripped."""
    match = _ANSWER_SPAN.search(response)
    return (match.group(1) if match else response).strip()


@functools.lru_cache(maxsize=1 << 16)  # a group's completions often repeat word for word
def symbolic_match(response: str, answer: str) -> bool:
    """R1-AQA's symbolic step: `verify(parse(response), parse(solution))`, any exception no match."""
    if threading.current_thread() is not threading.main_thread():
        # math-verify bounds its work with SIGALRM, which only the main thread can set; elsewhere
        # every call would fail and silently score 0, unlike R1-AQA.
        raise RuntimeError("the r1aqa accuracy rule (math-verify) must run on the main thread")
    from math_verify import parse, verify

    try:
        return float(verify(parse(response), parse(answer_tag(answer)))) > 0
    except Exception:  # noqa: BLE001 - R1-AQA: any failure of this step is no match
        return False


def accuracy_reward(response: str, answer: str, rule: AccuracyRule = "r1aqa") -> float:
    """1.0 when the response gives the answer (see the module's docstring for the two rules)."""
    if rule not in ("r1aqa", "exact"):
        raise ValueError(f"unknown accuracy rule {rule!r}: 'r1aqa' or 'exact'")
    # R1-AQA tries the symbolic check first; either step's 1.0 is the reward, so the cheap tag
    # match goes first here and math-verify runs only where it fails (the same rewards).
    if extract_answer(response) == extract_answer(answer_tag(answer)):
        return 1.0
    return 1.0 if rule == "r1aqa" and symbolic_match(response, answer) else 0.0


def format_reward(response: str, thinking: bool = False) -> float:
    pattern = _THINKING_FORMAT if thinking else _FORMAT
    return 1.0 if pattern.fullmatch(response) else 0.0


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the two rewards in the total (R1-AQA: 1 and 1)."""

    accuracy: float = 1.0
    format: float = 1.0


@dataclass(frozen=True)
class RewardScore:
    accuracy: float
    format: float
    total: float


def score_response(
    response: str,
    answer: str,
    weights: RewardWeights = RewardWeights(),
    thinking: bool = False,
    rule: AccuracyRule = "r1aqa",
) -> RewardScore:
    """Both rewards and their weighted total; `thinking` scores the format's thinking variant."""
    accuracy = accuracy_reward(response, answer, rule)
    fmt = format_reward(response, thinking=thinking)
    return RewardScore(accuracy, fmt, weights.accuracy * accuracy + weights.format * fmt)


def summarize_scores(scores: list[RewardScore]) -> dict[str, float]:
    """A step's reward figures, as every training loop logs them."""
    n = max(1, len(scores))
    return {
        "reward_mean": sum(s.total for s in scores) / n,
        "accuracy": sum(s.accuracy for s in scores) / n,
        "format_rate": sum(s.format for s in scores) / n,
    }


class RewardScorer:
    """The plain object behind the reward actor: scores a batch of (response, answer) pairs."""

    def __init__(
        self, weights: RewardWeights = RewardWeights(), thinking: bool = False, rule: AccuracyRule = "r1aqa"
    ):
        self.weights, self.thinking, self.rule = weights, thinking, rule

    def score(self, responses: list[str], answers: list[str]) -> list[RewardScore]:
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
        return [
            score_response(r, a, self.weights, self.thinking, self.rule)
            for r, a in zip(responses, answers, strict=True)
        ]
