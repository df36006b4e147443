"""`AudioQuestion`: one validated audio QA item, the unit that flows through the whole system."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "audio_path": self.audio_path,
            "question": self.question,
            "choices": list(self.choices),
            "answer": self.answer,
            "meta": dict(self.meta),
        }
