"""One GRPO step's bookkeeping, as plain functions shared by every training loop.

The distributed driver (`cluster/driver.py`) and the one-process loop (`learner/local_loop.py`)
both run: generate -> `usable_groups` -> score `responses_and_targets` -> `assemble_batch` (group
advantages) -> the learner's `train_step` -> `step_record`. No Ray, no vLLM, no model here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from learner.batch import LearnerBatch
from learner.grpo import group_advantages
from reward.captions import CiderD
from reward.rewards import RewardScore, summarize_scores
from rollout.audio import load_audio
from rollout.question import AudioQuestion, RolloutResult

Group = tuple[AudioQuestion, RolloutResult]


def _load(question: AudioQuestion) -> np.ndarray:
    return load_audio(question.audio_path)


def usable_groups(
    questions: Sequence[AudioQuestion], results: Sequence[RolloutResult], group_size: int
) -> list[Group]:
    """The questions that produced a full group of completions (a clip that failed to load drops
    its question; a partial group would bias its advantages)."""
    return [
        (q, r)
        for q, r in zip(questions, results, strict=True)
        if not r.error and len(r.completions) == group_size
    ]


def caption_statistics(train_set: Sequence[AudioQuestion]) -> CiderD | None:
    """CIDEr-D's document frequencies over the training set's captioned clips (None: no captions),
    counted once per run: scored within a group, every n-gram would weigh log(1) = 0."""
    captioned = [q.references for q in train_set if q.task == "caption"]
    return CiderD(captioned) if captioned else None


def responses_and_targets(groups: Sequence[Group]) -> tuple[list[str], list[str | list[str]]]:
    """(completion text, its target: the right answer or the clip's reference captions) for every
    completion, in batch order: what the reward scores."""
    texts = [c.text for _, r in groups for c in r.completions]
    targets = [q.target for q, r in groups for _ in r.completions]
    return texts, targets


def assemble_batch(
    groups: Sequence[Group],
    scores: Sequence[RewardScore],
    *,
    adv_eps: float = 1e-4,
    flip_advantages: bool = False,
    with_logprobs: bool = False,
    audio: Callable[[AudioQuestion], np.ndarray] = _load,
) -> LearnerBatch:
    """The learner's batch: each group's rewards normalised within the group (R1-AQA's advantage).

    `flip_advantages` is the control experiment (the learner climbs the wrong way); `with_logprobs`
    passes the rollout engine's log-probs on as the ratio's denominator (off-policy rollouts).
    """
    completions = [c for _, r in groups for c in r.completions]
    if len(scores) != len(completions):
        raise ValueError(f"{len(scores)} scores for {len(completions)} completions")
    group_size = len(groups[0][1].completions) if groups else 1
    rewards = torch.tensor([s.total for s in scores], dtype=torch.float32)
    advantages = group_advantages(rewards, group_size, eps=adv_eps) * (-1.0 if flip_advantages else 1.0)
    return LearnerBatch(
        questions=[(q.question, q.choices) for q, _ in groups],
        waveforms=[audio(q) for q, _ in groups],
        completions=[c.token_ids for c in completions],
        question_index=[i for i, (_, r) in enumerate(groups) for _ in r.completions],
        advantages=advantages.tolist(),
        behaviour_logprobs=[c.logprobs for c in completions] if with_logprobs else None,
    )


def step_record(
    step: int,
    results: Sequence[RolloutResult],
    scores: Sequence[RewardScore],
    batch: LearnerBatch,
    update: dict[str, float],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """One step's figures, as every loop logs them: rewards, loss, lengths, speed, phase timings.

    `seconds` holds each phase's duration ("generate_s", ...) and the whole "step_s".
    """
    tokens = sum(len(c) for c in batch.completions)
    return {
        "step": step,
        "rollout_version": min((r.policy_version for r in results), default=step - 1),
        **summarize_scores(list(scores)),
        **{k: update[k] for k in ("kl", "loss", "grad_norm", "lr", "clip_ratio")},
        "response_length": tokens / max(1, len(batch.completions)),
        "samples": len(batch.completions),
        "failed_questions": sum(1 for r in results if r.error),
        "generated_tokens_per_s": tokens / max(seconds.get("generate_s", 0.0), 1e-9),
        **seconds,
        **learner_phases(update),
    }


def learner_phases(update: dict[str, Any]) -> dict[str, float]:
    """Where the learner's part of a step went (`learner_reference_s`, `learner_forward_s`,
    `learner_backward_s`, `learner_optimizer_s`: the slowest rank's), as the learner reports it."""
    return {k: v for k, v in update.items() if k.startswith("learner_") and k.endswith("_s")}
