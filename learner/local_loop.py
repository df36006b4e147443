"""GRPO in one process with HF `generate`: R1-AQA's loop, on the real learner.

Sample B questions, generate G completions each, score them, normalise advantages within each
group, update. This is the reference loop: the learning proof runs it (with its sign-flipped
control) and the end-to-end benchmark uses it as the single-process baseline. The distributed
service runs the same steps across Ray actors.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from learner.grpo import group_advantages
from learner.learner import Learner, LearnerBatch
from reward.rewards import RewardWeights, extract_answer, score_response, summarize_scores
from rollout.hf_engine import hf_generate
from rollout.question import AudioQuestion
from rollout.sampling import SamplingConfig


@dataclass
class LoopConfig:
    steps: int = 100
    questions_per_step: int = 8
    eval_every: int = 10
    flip_advantages: bool = False  # the control: a learner that climbs the wrong way
    adv_eps: float = 1e-4
    stop_at_accuracy: float | None = None  # stop early once held-out accuracy reaches this
    seed: int = 0


def greedy_accuracy(
    learner: Learner,
    questions: list[AudioQuestion],
    waveforms: dict[str, np.ndarray],
    sampling: SamplingConfig,
    batch_size: int = 32,
) -> float:
    """Fraction of held-out questions whose greedy answer is exactly the right choice."""
    right = 0
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        outs = hf_generate(
            learner.model,
            learner.processor,
            [(q.question, q.choices) for q in chunk],
            [waveforms[q.id] for q in chunk],
            sampling,
            greedy=True,
        )
        texts = learner.processor.tokenizer.batch_decode([o[0] for o in outs], skip_special_tokens=True)
        right += sum(extract_answer(t) == q.answer for t, q in zip(texts, chunk, strict=True))
    return right / len(questions)


def run_local_grpo(
    learner: Learner,
    train: list[AudioQuestion],
    held_out: list[AudioQuestion],
    waveforms: dict[str, np.ndarray],
    sampling: SamplingConfig,
    loop: LoopConfig,
    weights: RewardWeights | None = None,
    log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run `loop.steps` GRPO steps; return one record per step (held-out accuracy where measured)."""
    weights = weights or RewardWeights()
    rng = random.Random(loop.seed)
    torch.manual_seed(loop.seed)
    tokenizer = learner.processor.tokenizer
    history = []
    for step in range(1, loop.steps + 1):
        started = time.perf_counter()
        picked = rng.sample(train, loop.questions_per_step)
        questions = [(q.question, q.choices) for q in picked]
        waves = [waveforms[q.id] for q in picked]
        groups = hf_generate(learner.model, learner.processor, questions, waves, sampling)
        completions = [c for group in groups for c in group]
        index = [qi for qi, group in enumerate(groups) for _ in group]
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        scores = [score_response(t, picked[qi].answer, weights) for t, qi in zip(texts, index, strict=True)]
        rewards = torch.tensor([s.total for s in scores])
        advantages = group_advantages(rewards, sampling.n, eps=loop.adv_eps)
        if loop.flip_advantages:
            advantages = -advantages
        generated = time.perf_counter()
        metrics = learner.train_step(LearnerBatch(questions, waves, completions, index, advantages.tolist()))
        record = {
            "step": step,
            **summarize_scores(scores),
            "kl": metrics["kl"],
            "loss": metrics["loss"],
            "grad_norm": metrics["grad_norm"],
            "completion_tokens": float(np.mean([len(c) for c in completions])),
            "generate_s": generated - started,
            "step_s": time.perf_counter() - started,
        }
        if loop.eval_every and (step % loop.eval_every == 0 or step == loop.steps):
            record["held_out_accuracy"] = greedy_accuracy(learner, held_out, waveforms, sampling)
        history.append(record)
        if log:
            log(record)
        if (
            loop.stop_at_accuracy is not None
            and record.get("held_out_accuracy", -1.0) >= loop.stop_at_accuracy
        ):
            break
    return history
