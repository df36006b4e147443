"""The units that flow through the system: a validated `AudioQuestion` in, its `RolloutResult` out.

One item type serves both tasks: a multiple-choice question (choices, one of them the answer) and
a caption request (no choices; reference captions instead). `task_of` is the one place that tells
them apart. `validate_choices` and `validate_references` are the validators that data loading and
the HTTP endpoint share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

MIN_CHOICES, MAX_CHOICES = 2, 8
Task = Literal["choice", "caption"]
# The caption task's question (R1-AQA's style: the prompt adds the <answer> instruction).
CAPTION_QUESTION = "Describe the audio in one sentence."


class ChoiceError(ValueError):
    """The choices of a question (or a caption's references) are unusable; the message says why."""


class RowError(ValueError):
    """One data row is invalid; the message says why (the row is reported and skipped)."""


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


def validate_references(references: Any) -> list[str]:
    """A caption item's references: a non-empty list of non-empty strings."""
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise ChoiceError('references must be a list of strings, e.g. ["a dog barks"]')
    if not references or any(not r.strip() for r in references):
        raise ChoiceError("references must hold at least one caption, none of them empty")
    return references


def task_of(choices: list[str]) -> Task:
    """Choices make a multiple-choice question; none make a caption request."""
    return "choice" if choices else "caption"


def valid_answer(answer: str, choices: list[str]) -> bool:
    """Whether an extracted answer is usable: one of the choices, or (a caption) any non-empty text."""
    return answer in choices if choices else bool(answer.strip())


@dataclass(frozen=True)
class AudioQuestion:
    """One audio clip and what is asked of it.

    Multiple choice: 2 to 8 distinct `choices`, one of which is `answer`. Caption: no choices, no
    answer, and the clip's reference captions in `references` (what CIDEr-D scores against).
    `meta` keeps the source's extra fields (MMAU's task, difficulty, sub-category, ...), which the
    evaluation breaks accuracy down by.
    """

    id: str
    audio_path: str
    question: str
    choices: list[str]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)

    @property
    def task(self) -> Task:
        return task_of(self.choices)

    @property
    def target(self) -> str | list[str]:
        """What the reward scores a response against: the answer, or the reference captions."""
        return self.answer if self.choices else self.references


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
