"""GRPO in one process with HF `generate`: R1-AQA's loop, on the real learner.

Sample B questions, generate G completions each, score them, normalise advantages within each
group, update: the same step functions (`learner.grpo_step`) as the distributed driver, with HF
generation in place of the rollout pool and the reward computed in-process. The learning proof
runs it (with its sign-flipped control) and the end-to-end benchmark uses it as the
single-process baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from learner.grpo_step import (
    assemble_batch,
    caption_statistics,
    responses_and_targets,
    step_record,
    usable_groups,
)
from learner.learner import Learner
from reward.rewards import RewardScorer, RewardWeights, accuracy_reward
from rollout.datasets import EpochSampler
from rollout.hf_engine import hf_rollouts
from rollout.question import AudioQuestion


@dataclass(frozen=True)
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
    batch_size: int = 32,
) -> float:
    """Fraction of held-out questions whose greedy answer the accuracy reward counts as right."""
    right = 0
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        results = _generate(learner, chunk, waveforms, greedy=True)
        right += sum(
            accuracy_reward(r.completions[0].text, q.answer) for r, q in zip(results, chunk, strict=True)
        )
    return right / len(questions)


def _generate(learner: Learner, questions, waveforms, greedy: bool = False):
    config = learner.config
    return hf_rollouts(
        learner.model,
        learner.processor,
        questions,
        [waveforms[q.id] for q in questions],
        config.sampling,
        greedy=greedy,
        thinking=config.prompt.thinking,
        version=learner.step,
    )


def run_local_grpo(
    learner: Learner,
    train: list[AudioQuestion],
    held_out: list[AudioQuestion],
    waveforms: dict[str, np.ndarray],
    loop: LoopConfig,
    weights: RewardWeights = RewardWeights(),
    log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run `loop.steps` GRPO steps; return one record per step (held-out accuracy where measured).

    Sampling (n, temperature, completion budget) and the prompt style are the learner's own
    (`learner.config.sampling`, `.prompt`), so generation and the loss read the same facts.
    """
    sampler = EpochSampler(len(train), loop.seed)
    scorer = RewardScorer(weights, thinking=learner.config.prompt.thinking, cider=caption_statistics(train))
    torch.manual_seed(loop.seed)
    history = []
    for step in range(1, loop.steps + 1):
        started = time.perf_counter()
        picked = [train[i] for i in sampler.take(loop.questions_per_step)]
        results = _generate(learner, picked, waveforms)
        generated = time.perf_counter()
        groups = usable_groups(picked, results, learner.config.sampling.n)
        scores = scorer.score(*responses_and_targets(groups))
        batch = assemble_batch(
            groups,
            scores,
            adv_eps=loop.adv_eps,
            flip_advantages=loop.flip_advantages,
            audio=lambda q: waveforms[q.id],
        )
        update = learner.train_step(batch)
        seconds = {"generate_s": generated - started, "step_s": time.perf_counter() - started}
        record = step_record(step, results, scores, batch, update, seconds)
        if loop.eval_every and (step % loop.eval_every == 0 or step == loop.steps):
            record["held_out_accuracy"] = greedy_accuracy(learner, held_out, waveforms)
        history.append(record)
        if log:
            log(record)
        if (
            loop.stop_at_accuracy is not None
            and record.get("held_out_accuracy", -1.0) >= loop.stop_at_accuracy
        ):
            break
    return history
