"""The sending side of the weight broadcast (see `rollout.weight_sync` for the protocol).

Every learner rank calls `WeightSender.send` (under ZeRO-3 the full weights must be gathered
collectively); only rank 0, a member of the sync group, broadcasts. The plan (which tensor sits in
which bucket) is made once from the first gathered state and shared with the receivers over the
group itself: nothing about it travels through the driver.
"""

from __future__ import annotations

import time

from learner.hf_format import published_state
from rollout.weight_sync import SyncGroup, SyncPlan, empty_buckets, make_plan, pack_buckets


class WeightSender:
    """One learner rank's side of the sync: `group` on rank 0 (None elsewhere), the plan and the
    send buckets, both made once per run (fresh buckets each step would page-fault every byte)."""

    def __init__(self, group: SyncGroup | None, bucket_bytes: int):
        self.group, self.bucket_bytes = group, bucket_bytes
        self.plan: SyncPlan | None = None
        self._buckets = None

    def send(self, learner) -> dict[str, float]:
        """Pack and broadcast every bucket (rank 0); returns timings."""
        started = time.perf_counter()
        with learner.gathered():
            if learner.rank != 0:
                return {"pack_s": 0.0, "broadcast_s": 0.0}
            if self.group is None:
                raise RuntimeError("init_weight_sync was not called on learner rank 0")
            tensors = {name: t.detach() for name, t in published_state(learner.model)}
            if self.plan is None:  # names in the published layout, which vLLM loads
                self.plan = make_plan(tensors.items(), self.bucket_bytes)
            self.group.share_plan(self.plan)  # once per group: a rebuilt group gets it again
            if self._buckets is None:
                self._buckets = empty_buckets(self.plan, self.group.device)
            buckets = pack_buckets(self.plan, tensors, self.group.device, out=self._buckets)
        packed = time.perf_counter()
        for bucket in buckets:
            self.group.broadcast(bucket)
        self.group.barrier_done()
        return {
            "pack_s": packed - started,
            "broadcast_s": time.perf_counter() - packed,
            "bytes": float(sum(b.numel() * b.element_size() for b in buckets)),
            "buckets": float(len(buckets)),
        }
