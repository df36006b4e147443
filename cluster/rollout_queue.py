"""The rollouts a training step takes: on-policy, or one policy version ahead of the learner.

On-policy (R1-AQA): a step's questions are generated when the step asks for them, with the weights
of the last update. One version ahead (`train.overlap_rollout`): when a step takes its rollouts,
the next step's questions are submitted at once, so they generate during this step's update on
the policy one update behind (the loss corrects with the engine's log-probs). Either way a weight
sync waits for generation in flight (`settle`), since workers apply it only between requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rollout.question import AudioQuestion, RolloutResult
from rollout.sampling import SamplingConfig


@dataclass
class StepRollouts:
    questions: list[AudioQuestion]
    results: list[RolloutResult]
    data_position: int  # data consumed up to and including these questions: a resume starts after it


class RolloutQueue:
    """`take()` one step's rollouts from `pool`; `draw()` gives the next step's questions and the
    data position after them."""

    def __init__(
        self,
        pool,
        draw: Callable[[], tuple[list[AudioQuestion], int]],
        sampling: SamplingConfig,
        ahead: bool,
    ):
        self.pool, self.draw, self.sampling, self.ahead = pool, draw, sampling, ahead
        self._pending = None  # (questions, data position, the pool's in-flight handle)

    def _submit(self) -> None:
        questions, position = self.draw()
        self._pending = (
            questions,
            position,
            self.pool.submit(questions, self.sampling, want_logprobs=self.ahead),
        )

    def take(self, more: bool) -> StepRollouts:
        """This step's rollouts; with `ahead` and `more` steps to come, the next step's start now."""
        if self._pending is None:
            self._submit()
        questions, position, inflight = self._pending
        self._pending = None
        results = self.pool.collect(inflight)
        if self.ahead and more:
            self._submit()
        return StepRollouts(questions, results, position)

    def settle(self) -> None:
        """Wait until no generation is in flight (before the workers' weights change)."""
        if self._pending is not None:
            self._pending[2].wait()
