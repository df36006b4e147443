"""The sending side of the weight broadcast (see `rollout.weight_sync` for the protocol).

Every learner rank calls `send_weights` (under ZeRO-3 the full weights must be gathered
collectively); only rank 0, a member of the sync group, broadcasts. The plan (which tensor sits in
which bucket) is made once from the first gathered state and shared with the receivers over the
group itself: nothing about it travels through the driver.
"""

from __future__ import annotations

import time

from learner.hf_format import published_state
from rollout.weight_sync import SyncGroup, empty_buckets, make_plan, pack_buckets


def send_weights(learner, group: SyncGroup | None, bucket_bytes: int) -> dict[str, float]:
    """Pack and broadcast every bucket (rank 0); returns timings."""
    started = time.perf_counter()
    with learner.gathered():
        if learner.rank != 0:
            return {"pack_s": 0.0, "broadcast_s": 0.0}
        if group is None:
            raise RuntimeError("init_weight_sync was not called on learner rank 0")
        tensors = {name: t.detach() for name, t in published_state(learner.model)}
        if getattr(learner, "_sync_plan", None) is None:  # names in the published layout vLLM loads
            learner._sync_plan = make_plan(tensors.items(), bucket_bytes)
        plan = group.share_plan(learner._sync_plan)
        # One set of buckets for the whole run: packing is then the one copy, with no page faults.
        if getattr(learner, "_send_buckets", None) is None:
            learner._send_buckets = empty_buckets(plan, group.device)
        buckets = pack_buckets(plan, tensors, group.device, out=learner._send_buckets)
    packed = time.perf_counter()
    for bucket in buckets:
        group.broadcast(bucket)
    group.barrier_done()
    return {
        "pack_s": packed - started,
        "broadcast_s": time.perf_counter() - packed,
        "bytes": float(sum(b.numel() * b.element_size() for b in buckets)),
        "buckets": float(len(buckets)),
    }
