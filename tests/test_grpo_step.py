"""One GRPO step's plain functions, the data sampler and the rollout queue: no Ray, vLLM or model."""

from __future__ import annotations

import pytest
import torch

from cluster.rollout_queue import RolloutQueue
from learner.grpo import group_advantages
from learner.grpo_step import assemble_batch, responses_and_targets, step_record, usable_groups
from reward.rewards import RewardScorer
from rollout.datasets import EpochSampler
from rollout.question import AudioQuestion, Completion, RolloutResult
from rollout.sampling import SamplingConfig


def question(i: int) -> AudioQuestion:
    return AudioQuestion(f"q{i}", f"/clips/{i}.wav", "Is the tone high or low?", ["high", "low"], "high")


def result(q: AudioQuestion, answers: list[str], version: int = 0, error: str | None = None) -> RolloutResult:
    completions = [
        Completion([1] * (k + 2), f"<answer>{a}</answer>", [-0.5] * (k + 2)) for k, a in enumerate(answers)
    ]
    return RolloutResult(q.id, [] if error else completions, version, error)


def test_usable_groups_drop_failed_and_partial_questions():
    qs = [question(i) for i in range(4)]
    results = [
        result(qs[0], ["high", "low"]),
        result(qs[1], [], error="audio: cannot decode"),
        result(qs[2], ["low"]),  # a partial group would bias its advantages
        result(qs[3], ["low", "low"]),
    ]
    groups = usable_groups(qs, results, group_size=2)
    assert [q.id for q, _ in groups] == ["q0", "q3"]
    texts, answers = responses_and_targets(groups)
    assert texts == [
        "<answer>high</answer>",
        "<answer>low</answer>",
        "<answer>low</answer>",
        "<answer>low</answer>",
    ]
    assert answers == ["high"] * 4


def test_assemble_batch_normalises_rewards_within_each_group():
    qs = [question(i) for i in range(2)]
    groups = usable_groups(qs, [result(qs[0], ["high", "low", "low"]), result(qs[1], ["low"] * 3)], 3)
    scores = RewardScorer().score(*responses_and_targets(groups))
    batch = assemble_batch(groups, scores, adv_eps=1e-4, with_logprobs=True, audio=lambda q: q.id)
    rewards = torch.tensor([s.total for s in scores])
    assert batch.advantages == pytest.approx(group_advantages(rewards, 3).tolist())
    assert batch.advantages[3:] == [0.0, 0.0, 0.0]  # equal rewards: no signal
    assert batch.question_index == [0, 0, 0, 1, 1, 1] and batch.waveforms == ["q0", "q1"]
    assert batch.questions == [(q.question, q.choices) for q in qs]
    assert batch.completions[1] == [1, 1, 1] and batch.behaviour_logprobs[1] == [-0.5] * 3
    flipped = assemble_batch(groups, scores, flip_advantages=True, audio=lambda q: None)
    assert flipped.advantages == pytest.approx([-a for a in batch.advantages])
    assert flipped.behaviour_logprobs is None
    with pytest.raises(ValueError, match="5 scores for 6 completions"):
        assemble_batch(groups, scores[:5], audio=lambda q: None)


def test_step_record_holds_the_figures_every_loop_logs():
    qs = [question(i) for i in range(2)]
    results = [result(qs[0], ["high", "low"], version=3), result(qs[1], [], version=4, error="bad clip")]
    groups = usable_groups(qs, results, 2)
    scores = RewardScorer().score(*responses_and_targets(groups))
    batch = assemble_batch(groups, scores, audio=lambda q: None)
    update = {"kl": 0.1, "loss": 0.2, "grad_norm": 0.3, "lr": 1e-6, "clip_ratio": 0.0, "responses": 2}
    record = step_record(7, results, scores, batch, update, {"generate_s": 0.5, "step_s": 1.0})
    assert record["step"] == 7 and record["rollout_version"] == 3 and record["failed_questions"] == 1
    assert record["reward_mean"] == 1.5 and record["accuracy"] == 0.5 and record["format_rate"] == 1.0
    assert record["samples"] == 2 and record["response_length"] == 2.5
    assert record["generated_tokens_per_s"] == 10.0 and record["step_s"] == 1.0 and record["kl"] == 0.1


def test_epoch_sampler_visits_everything_once_per_epoch_and_resumes_exactly():
    sampler = EpochSampler(10, seed=3)
    first, second = sampler.take(10), sampler.take(10)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    again = EpochSampler(10, seed=3)
    head = again.take(7)
    resumed = EpochSampler(10, seed=3, position=again.position)
    assert head + resumed.take(13) == first + second
    assert EpochSampler(10, seed=4).take(10) != first
    with pytest.raises(ValueError):
        EpochSampler(0, seed=0)


class FakePool:
    """Stands in for `RolloutPool`: records what was submitted, at which policy version."""

    def __init__(self):
        self.version, self.submitted, self.collected, self.waited = 0, [], 0, 0

    def submit(self, questions, sampling, want_logprobs=False):
        self.submitted.append(([q.id for q in questions], self.version, want_logprobs))
        return self

    def collect(self, handle):
        ids, version, _ = self.submitted[self.collected]
        self.collected += 1
        return [RolloutResult(i, policy_version=version) for i in ids]

    def wait(self):
        self.waited += 1


def run_queue(ahead: bool, steps: int = 3):
    pool = FakePool()
    sampler, data = EpochSampler(100, seed=0), [question(i) for i in range(100)]

    def draw():
        return [data[i] for i in sampler.take(2)], sampler.position

    queue = RolloutQueue(pool, draw, SamplingConfig(), ahead=ahead)
    taken = []
    for step in range(1, steps + 1):
        rollouts = queue.take(more=step < steps)
        queue.settle()
        pool.version = step  # the weight sync after the update
        taken.append(rollouts)
    return pool, taken


def test_rollout_queue_on_policy_generates_each_step_with_the_newest_weights():
    pool, taken = run_queue(ahead=False)
    assert [v for _, v, _ in pool.submitted] == [0, 1, 2] and pool.waited == 0
    assert [r.results[0].policy_version for r in taken] == [0, 1, 2]
    assert [r.data_position for r in taken] == [2, 4, 6]
    assert not any(logprobs for *_, logprobs in pool.submitted)


def test_rollout_queue_one_version_ahead_overlaps_the_next_step():
    pool, taken = run_queue(ahead=True)
    # Step 1's questions at version 0, step 2's submitted during update 1 (still version 0), ...
    assert [v for _, v, _ in pool.submitted] == [0, 0, 1]
    assert [r.results[0].policy_version for r in taken] == [0, 0, 1]
    assert [r.data_position for r in taken] == [2, 4, 6]  # each step's own data, not the next's
    assert pool.waited == 2  # the sync after steps 1 and 2 waited for the generation in flight
    assert all(logprobs for *_, logprobs in pool.submitted)  # the ratio's denominator
    assert len({tuple(ids) for ids, _, _ in pool.submitted}) == 3  # nothing generated twice
