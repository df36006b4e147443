"""Ray actor shells: each is `ray.remote` over a plain class that tests can also use without Ray.

Placement (which node, how many GPUs) is decided by the caller through `.options(...)`.
"""

from __future__ import annotations

import ray

from learner.learner import Learner
from reward.rewards import RewardScorer
from rollout.vllm_engine import RolloutWorker

LearnerActor = ray.remote(Learner)
RewardActor = ray.remote(RewardScorer)
# vLLM calls back into the worker during a weight broadcast while generate may be queued:
# one thread is right (calls run in order), and the broadcast's caller runs concurrently.
RolloutActor = ray.remote(RolloutWorker)
