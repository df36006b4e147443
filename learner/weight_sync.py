"""The sending side of the weight broadcast (see `rollout.weight_sync` for the protocol).

Every learner rank calls `send_weights` (under ZeRO-3 the full weights must be gathered
collectively); only rank 0, a member of the sync group, broadcasts.
"""

from __future__ import annotations

import contextlib
import time

from learner.hf_format import published_state
from rollout.weight_sync import SyncGroup, empty_buckets, make_plan, pack_buckets, plan_to_wire


def _gathered(learner):
    if learner.config.zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(learner.model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def weight_plan(learner, bucket_bytes: int) -> dict:
    """The broadcast plan (names in the published checkpoint layout, which vLLM loads)."""
    with _gathered(learner):
        return plan_to_wire(make_plan(published_state(learner.model), bucket_bytes))


def send_weights(learner, group: SyncGroup | None, wire_plan: dict) -> dict[str, float]:
    """Pack and broadcast every bucket (rank 0); returns timings."""
    from rollout.weight_sync import plan_from_wire

    started = time.perf_counter()
    with _gathered(learner):
        if learner.rank != 0:
            return {"pack_s": 0.0, "broadcast_s": 0.0}
        if group is None:
            raise RuntimeError("init_weight_sync was not called on learner rank 0")
        plan = plan_from_wire(wire_plan)
        tensors = {name: t.detach() for name, t in published_state(learner.model)}
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
    }


def open_group(host: str, port: int, world_size: int, backend: str, timeout_s: float = 300.0) -> SyncGroup:
    return SyncGroup(host, port, 0, world_size, backend, timeout_s)
