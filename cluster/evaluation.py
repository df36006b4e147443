"""Held-out evaluation: greedy answers from any generator, scored with MMAU's official metric.

`generator` is the rollout pool during training, or one `RolloutWorker` for `audio-grpo eval`:
anything with `generate(questions, sampling, greedy=True) -> list[RolloutResult]`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reward.mmau import mmau_scores
from reward.rewards import extract_answer
from rollout.question import AudioQuestion
from rollout.sampling import SamplingConfig


def evaluate(
    generator, questions: list[AudioQuestion], sampling: SamplingConfig, out_path: Path
) -> dict[str, Any]:
    """Greedy answers scored with MMAU's metric; the predictions are written to `out_path`."""
    results = generator.generate(questions, sampling, greedy=True)
    items = []
    for q, result in zip(questions, results, strict=True):
        text = result.completions[0].text if result.completions else ""
        items.append(
            {
                **q.meta,
                "id": q.id,
                "question": q.question,
                "choices": q.choices,
                "answer": q.answer,
                "model_output": extract_answer(text),
                "response": text,
                "policy_version": result.policy_version,
            }
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(items, indent=1))
    return mmau_scores(items)
