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
- cider_d, the caption task's accuracy: CIDEr-D (`reward/captions.py`) of the answer (the text
  inside the first one-line `<answer>` span, else the whole response) against the clip's
  references, with document frequencies from the training corpus. The format reward is the same.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from typing import Literal

from reward.captions import CiderD

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
    """Weights of the rule rewards in the total (R1-AQA: accuracy 1 and format 1; captions score
    CIDEr-D where questions score accuracy)."""

    accuracy: float = 1.0
    format: float = 1.0
    cider_d: float = 1.0


@dataclass(frozen=True)
class RewardScore:
    """One response's reward parts and their weighted total; a part the task lacks is None."""

    format: float
    total: float
    accuracy: float | None = None  # multiple choice
    cider_d: float | None = None  # caption
    similarity: float | None = None  # a reward model's (reward.models), added by `with_similarity`


def score_response(
    response: str,
    target: str | list[str],
    weights: RewardWeights = RewardWeights(),
    thinking: bool = False,
    rule: AccuracyRule = "r1aqa",
    cider: CiderD | None = None,
) -> RewardScore:
    """The rule rewards and their weighted total. `target`: the right answer (a question), or the
    reference captions (a caption, scored by CIDEr-D with `cider`'s corpus); `thinking` scores
    the format's thinking variant."""
    fmt = format_reward(response, thinking=thinking)
    if isinstance(target, str):
        accuracy = accuracy_reward(response, target, rule)
        return RewardScore(fmt, weights.accuracy * accuracy + weights.format * fmt, accuracy=accuracy)
    if cider is None:
        raise ValueError("a caption is scored with CIDEr-D, which needs the training corpus (cider=)")
    value = cider.score(extract_answer(response), target)
    return RewardScore(fmt, weights.cider_d * value + weights.format * fmt, cider_d=value)


def with_similarity(score: RewardScore, similarity: float, weight: float) -> RewardScore:
    """`score` with a reward model's similarity added (weighted) to its total."""
    total = score.total + weight * similarity
    return RewardScore(score.format, total, score.accuracy, score.cider_d, similarity)


def summarize_scores(scores: list[RewardScore]) -> dict[str, float]:
    """A step's reward figures, as every training loop logs them: the mean total, the format rate
    and the mean of each part the responses have (accuracy, cider_d, similarity)."""
    n = max(1, len(scores))
    out = {
        "reward_mean": sum(s.total for s in scores) / n,
        "format_rate": sum(s.format for s in scores) / n,
    }
    for part in ("accuracy", "cider_d", "similarity"):
        values = [getattr(s, part) for s in scores if getattr(s, part) is not None]
        if values:
            out[part] = sum(values) / len(values)
    return out


class RewardScorer:
    """The plain object behind the reward actor: scores a batch of responses against their targets
    (answers, or reference captions; `cider` holds the training corpus's CIDEr-D statistics)."""

    def __init__(
        self,
        weights: RewardWeights = RewardWeights(),
        thinking: bool = False,
        rule: AccuracyRule = "r1aqa",
        cider: CiderD | None = None,
    ):
        self.weights, self.thinking, self.rule, self.cider = weights, thinking, rule, cider

    def score(self, responses: list[str], targets: list[str | list[str]]) -> list[RewardScore]:
        if len(responses) != len(targets):
            raise ValueError(f"{len(responses)} responses but {len(targets)} targets")
        return [
            score_response(r, t, self.weights, self.thinking, self.rule, self.cider)
            for r, t in zip(responses, targets, strict=True)
        ]
