"""Held-out evaluation: greedy answers from any generator, scored with MMAU's official metric
(questions) or CIDEr-D, BLEU-4 and ROUGE-L (captions): `reward.held_out`.

`generator` is the rollout pool during training, or one `RolloutWorker` for `audio-grpo eval`:
anything with `generate(questions, sampling, greedy=True) -> list[RolloutResult]`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reward.held_out import held_out_scores
from reward.rewards import extract_answer
from rollout.question import AudioQuestion
from rollout.sampling import SamplingConfig


def evaluate(
    generator,
    questions: list[AudioQuestion],
    sampling: SamplingConfig,
    out_path: Path,
    model_rewards: Callable[[list[str], list[str]], dict[str, list[float]]] | None = None,
) -> dict[str, Any]:
    """Greedy answers scored (`held_out_scores`); the predictions are written to `out_path`.
    `model_rewards(clips, responses)`: the reward models' scores of the captions, kept per item."""
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
                **({"references": q.references} if q.references else {}),
                "model_output": extract_answer(text),
                "response": text,
                "policy_version": result.policy_version,
            }
        )
    captions = [i for i, q in enumerate(questions) if q.references]
    if model_rewards and captions:
        parts = model_rewards(
            [questions[i].audio_path for i in captions], [items[i]["response"] for i in captions]
        )
        for name, values in parts.items():
            for i, value in zip(captions, values, strict=True):
                items[i][name] = value
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(items, indent=1))
    return held_out_scores(items)
