"""The units that flow through the system: a validated `AudioQuestion` in, its `RolloutResult` out.

`validate_choices` is the one choice validator: data loading and the HTTP endpoint both call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MIN_CHOICES, MAX_CHOICES = 2, 8


class ChoiceError(ValueError):
    """The choices of a question are unusable; the message says why."""


def validate_choices(choices: Any, *, allow_duplicates: bool = False) -> list[str]:
    """2 to 8 non-empty strings, distinct unless `allow_duplicates` (MMAU test-mini has a few)."""
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise ChoiceError('choices must be a list of strings, e.g. ["Man", "Woman"]')
    if not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
        raise ChoiceError(f"needs {MIN_CHOICES} to {MAX_CHOICES} choices, has {len(choices)}")
    if any(not c.strip() for c in choices):
        raise ChoiceError("a choice is empty")
    if len(set(choices)) != len(choices) and not allow_duplicates:
        raise ChoiceError(f"duplicate choices {choices}: choices must be distinct")
    return choices


@dataclass(frozen=True)
class AudioQuestion:
    """A question about one audio clip with 2 to 8 distinct choices, one of which is `answer`.

    `meta` keeps the source's extra fields (MMAU's task, difficulty, sub-category, ...), which the
    evaluation breaks accuracy down by.
    """

    id: str
    audio_path: str
    question: str
    choices: list[str]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    token_ids: list[int]  # up to and including the end token the engine stopped on
    text: str
    logprobs: list[float] | None = None  # the sampling policy's log-prob per token, when asked for


@dataclass
class RolloutResult:
    """The `n` completions of one question, and the policy version that produced them."""

    question_id: str
    completions: list[Completion] = field(default_factory=list)
    policy_version: int = 0
    error: str | None = None  # e.g. the audio could not be loaded: the question is dropped, not retried
