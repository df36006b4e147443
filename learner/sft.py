"""Supervised fine-tuning, the baseline R1-AQA sets GRPO against: the same data, prompt, audio
loader and model, trained to write the right choice in the rewarded format (the thinking variant's
with `prompt.thinking`).

`sft_batch` makes a `LearnerBatch` with one completion per question, the target's tokens (plus the
end token), and `sft_step` takes one update on it with the learner's own DeepSpeed engine and
log-prob path (so audio is encoded and prompts run exactly as in GRPO, in the run's prompt
style). The loss is the mean negative log-likelihood of the target tokens over the step's tokens
on all ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from learner.batch import LearnerBatch
from reward.rewards import rewarded_response
from rollout.audio import load_audio
from rollout.question import AudioQuestion


def sft_target(question: AudioQuestion, thinking: bool = False) -> str:
    """What the policy is taught to write: `<answer>right choice</answer>`; with `thinking`,
    `<think>reasoning</think> <answer>right choice</answer>`, the reasoning being the item's
    `reasoning` field. AVQA has none: its think block is then empty (the format, not reasoning)."""
    return rewarded_response(
        question.answer, thinking=thinking, reasoning=str(question.meta.get("reasoning", ""))
    )


def sft_batch(
    questions: list[AudioQuestion],
    tokenizer,
    end_id: int,
    audio: Callable[[AudioQuestion], np.ndarray] = lambda q: load_audio(q.audio_path),
    thinking: bool = False,
) -> LearnerBatch:
    """One completion per question: the target's token ids and the end token."""
    targets = [
        tokenizer(sft_target(q, thinking), add_special_tokens=False).input_ids + [end_id] for q in questions
    ]
    return LearnerBatch(
        [(q.question, q.choices) for q in questions],
        [audio(q) for q in questions],
        targets,
        list(range(len(questions))),
        [0.0] * len(questions),  # unused: no advantages in SFT
    )


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, step_tokens: float) -> torch.Tensor:
    """Negative log-likelihood of the target tokens, summed and divided by the step's tokens."""
    return -(logp * mask).sum() / max(step_tokens, 1.0)


def sft_step(learner: Any, batch: LearnerBatch) -> dict[str, Any]:
    """One supervised update on this rank's share of the batch (micro-batched like GRPO).

    `learner` is a `learner.learner.Learner` (its public step pieces, as `learner/grpo_update.py`
    uses them); this module does not import it."""
    if learner.config.sampling.temperature != 1.0:
        raise ValueError("SFT takes log-probs at temperature 1: set sampling.temperature: 1.0")
    encoded = learner.encode(batch)
    micro = learner.micro_batches(batch, encoded)
    n_tokens = sum(m.tokens for m in micro)
    # DeepSpeed averages the ranks' gradients: each rank divides by the mean tokens per rank.
    step_tokens = learner.sum_over_ranks(n_tokens) / learner.world_size
    lr = learner.begin_update(len(micro))
    loss_total, grad_norm = 0.0, None
    for i, m in enumerate(micro):
        with learner.phase("forward"):
            logp = learner.logprobs(m, encoded)
            loss = sft_loss(logp, m.rows.completion_mask.to(logp.device), step_tokens)
        learner.backward(loss)
        grad_norm = learner.optimizer_step(last=i == len(micro) - 1) or grad_norm
        loss_total += loss.item()
    return {"loss": loss_total, **learner.finish_update(grad_norm), "lr": lr, "tokens": n_tokens}
