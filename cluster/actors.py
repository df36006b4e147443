"""Ray actor shells: each is `ray.remote` over a plain class that tests can also use without Ray.

Placement (which node, how many GPUs) is decided by the caller through `.options(...)`.
"""

from __future__ import annotations

import ray

from learner.learner import Learner
from reward.rewards import RewardScorer
from reward_models.clap import ClapReward
from rollout.vllm_engine import RolloutWorker

LearnerActor = ray.remote(Learner)
RewardActor = ray.remote(RewardScorer)
ModelRewardActor = ray.remote(ClapReward)  # the one kind so far (reward.models kind "clap")
# Threaded: a request that arrives during a weight update waits inside the actor (the worker's
# PolicyGate) while the update's later calls (update, finish) still get a thread to run on.
RolloutActor = ray.remote(max_concurrency=8)(RolloutWorker)
