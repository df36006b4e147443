"""Ray actor shells: each is `ray.remote` over a plain class that tests can also use without Ray.

Placement (which node, how many GPUs) is decided by the caller through `.options(...)`.
"""

from __future__ import annotations

import ray

from learner.learner import Learner
from reward.rewards import RewardScorer

LearnerActor = ray.remote(Learner)
RewardActor = ray.remote(RewardScorer)
