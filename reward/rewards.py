"""R1-AQA's rule-based rewards, exactly as its public code computes them. Pure stdlib.

- accuracy: the text inside the first `<answer>...</answer>` (no DOTALL: the span must sit on one
  line; if there is none, the whole response), stripped, compared case-sensitively with the
  ground-truth choice: 1.0 or 0.0.
- format: 1.0 iff the whole response fully matches `<answer>.*?</answer>` (DOTALL); the thinking
  variant requires `<think>.*?</think>\\s*<answer>.*?</answer>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>")
_FORMAT = re.compile(r"<answer>.*?</answer>", re.DOTALL)
_THINKING_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def answer_tag(choice: str) -> str:
    """A response in the rewarded format: `<answer>choice</answer>`."""
    return f"<answer>{choice}</answer>"


def extract_answer(response: str) -> str:
    """The answer a response gives: the first one-line `<answer>` span, else the whole text, stripped."""
    match = _ANSWER_SPAN.search(response)
    return (match.group(1) if match else response).strip()


def accuracy_reward(response: str, answer: str) -> float:
    return 1.0 if extract_answer(response) == answer.strip() else 0.0


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
    response: str, answer: str, weights: RewardWeights = RewardWeights(), thinking: bool = False
) -> RewardScore:
    """Both rewards and their weighted total; `thinking` scores the format's thinking variant."""
    accuracy = accuracy_reward(response, answer)
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

    def __init__(self, weights: RewardWeights = RewardWeights(), thinking: bool = False):
        self.weights, self.thinking = weights, thinking

    def score(self, responses: list[str], answers: list[str]) -> list[RewardScore]:
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
        return [
            score_response(r, a, self.weights, self.thinking) for r, a in zip(responses, answers, strict=True)
        ]
