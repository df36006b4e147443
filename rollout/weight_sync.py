"""Bucketed weight broadcast from the learner into running vLLM engines.

The learner's rank 0 and every rollout engine's worker join a private process group (rank 0 sends;
gloo on CPU, NCCL on GPU), separate from vLLM's own torch.distributed state. Per update:

1. every receiver is asked (collective_rpc, non-blocking for the caller) to `receive_weights()`;
2. the sender packs the tensors per dtype into flat buckets of about `bucket_bytes` and broadcasts
   them in order; receivers allocate the same buckets and receive into them. The plan (names,
   dtypes, shapes, offsets) goes from the sender to the receivers once per group, over the group's
   own store, with the first update;
3. only when every bucket has arrived does a receiver call vLLM's `reload_weights` once, with views
   into the buckets. One reload session per update matters: a fused layer (q/k/v, gate/up) split
   across two sessions would be silently corrupted, and a half-applied reload kills the engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import torch

DEFAULT_BUCKET_BYTES = 256 * 1024**2


@dataclass
class TensorSlot:
    name: str
    dtype: str  # "bfloat16", "float32", ...
    shape: list[int]
    bucket: int
    offset: int  # in elements
    numel: int


@dataclass
class SyncPlan:
    slots: list[TensorSlot]
    buckets: list[tuple[str, int]]  # (dtype, numel) per bucket, in broadcast order

    @property
    def nbytes(self) -> int:
        return sum(n * torch.empty(0, dtype=getattr(torch, d)).element_size() for d, n in self.buckets)


def make_plan(
    tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> SyncPlan:
    """Assign each tensor to a bucket of its dtype; start a new bucket when one is full."""
    slots: list[TensorSlot] = []
    buckets: list[tuple[str, int]] = []
    open_bucket: dict[str, int] = {}  # dtype -> index of its bucket being filled
    for name, tensor in tensors:
        dtype = str(tensor.dtype).removeprefix("torch.")
        numel, size = tensor.numel(), tensor.element_size()
        index = open_bucket.get(dtype)
        if index is None or (buckets[index][1] + numel) * size > bucket_bytes and buckets[index][1] > 0:
            buckets.append((dtype, 0))
            index = open_bucket[dtype] = len(buckets) - 1
        offset = buckets[index][1]
        buckets[index] = (dtype, offset + numel)
        slots.append(TensorSlot(name, dtype, list(tensor.shape), index, offset, numel))
    return SyncPlan(slots, buckets)


def empty_buckets(plan: SyncPlan, device: torch.device) -> list[torch.Tensor]:
    return [torch.empty(numel, dtype=getattr(torch, dtype), device=device) for dtype, numel in plan.buckets]


def pack_buckets(
    plan: SyncPlan,
    tensors: dict[str, torch.Tensor],
    device: torch.device,
    out: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Flat buckets holding every tensor of the plan at its offset (written into `out` if given)."""
    buckets = out if out is not None else empty_buckets(plan, device)
    for slot in plan.slots:
        buckets[slot.bucket][slot.offset : slot.offset + slot.numel].copy_(tensors[slot.name].reshape(-1))
    return buckets


def unpack_buckets(plan: SyncPlan, buckets: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(name, view) pairs into the received buckets: no copies."""
    return [(s.name, buckets[s.bucket][s.offset : s.offset + s.numel].view(s.shape)) for s in plan.slots]


class SyncGroup:
    """A private broadcast group: rank 0 is the learner, ranks 1.. are rollout engines.

    gloo (CPU) uses torch's ProcessGroupGloo over a TCPStore; NCCL (GPU) uses vLLM's
    PyNcclCommunicator over a stateless group, the way vLLM's RLHF examples do.
    """

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        backend: str = "gloo",
        timeout_s: float = 300.0,
    ):
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.plan: SyncPlan | None = None  # agreed with the first update (`share_plan`)
        timeout = timedelta(seconds=timeout_s)
        if backend == "gloo":
            from torch.distributed import PrefixStore, ProcessGroupGloo, TCPStore

            store = self._store = TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout)
            options = ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [ProcessGroupGloo.create_device(hostname=host)]
            self._group = ProcessGroupGloo(PrefixStore("weight-sync", store), rank, world_size, options)
            self.device = torch.device("cpu")
        elif backend == "nccl":
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup

            group = self._store = StatelessProcessGroup.create(
                host=host, port=port, rank=rank, world_size=world_size, store_timeout=int(timeout_s)
            )
            self.device = torch.device(f"cuda:{torch.cuda.current_device()}")
            self._group = PyNcclCommunicator(group, device=self.device)
        else:
            raise ValueError(f"unknown weight-sync backend {backend!r}")

    def share_plan(self, plan: SyncPlan | None = None) -> SyncPlan:
        """Rank 0 publishes its plan, every other rank waits for it (the group's timeout applies)."""
        if self.plan is None:
            if self.backend == "gloo":
                if self.rank == 0:
                    self._store.set("plan", json.dumps(plan_to_wire(plan)))
                    self.plan = plan
                else:
                    self.plan = plan_from_wire(json.loads(self._store.get("plan")))
            else:
                self.plan = plan_from_wire(self._store.broadcast_obj(plan_to_wire(plan) if plan else None, 0))
        return self.plan

    def broadcast(self, tensor: torch.Tensor) -> None:
        if self.backend == "gloo":
            self._group.broadcast(tensor, 0).wait()
        else:
            self._group.broadcast(tensor, src=0, stream=torch.cuda.current_stream())

    def barrier_done(self) -> None:
        if self.backend == "nccl":
            torch.cuda.synchronize()


def plan_to_wire(plan: SyncPlan) -> dict:
    return {"slots": [vars(s) for s in plan.slots], "buckets": [list(b) for b in plan.buckets]}


def plan_from_wire(wire: dict) -> SyncPlan:
    return SyncPlan([TensorSlot(**s) for s in wire["slots"]], [(d, n) for d, n in wire["buckets"]])


class WeightReceiver:
    """vLLM worker extension (`worker_extension_cls="rollout.weight_sync.WeightReceiver"`).

    Its methods run inside vLLM's worker process (`self` is the worker) via `collective_rpc`.
    """

    def init_weight_sync(
        self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 300.0
    ) -> None:
        self._weight_group = SyncGroup(host, port, rank, world_size, backend, timeout_s)

    def receive_weights(self) -> dict[str, float]:
        """Receive every bucket, then reload once. Returns the tensor count and timings."""
        started = time.perf_counter()
        group = self._weight_group
        plan = group.share_plan()
        # The buckets are kept for the next update: fresh memory each time would cost page faults
        # on every byte (about one more copy). reload_weights copies out of them, so reuse is safe.
        buckets = getattr(self, "_weight_buckets", None)
        if buckets is None or [(str(b.dtype)[6:], b.numel()) for b in buckets] != plan.buckets:
            buckets = self._weight_buckets = empty_buckets(plan, group.device)
        for bucket in buckets:  # a lost bucket raises here, before any weight is touched
            group.broadcast(bucket)
        group.barrier_done()
        received = time.perf_counter()
        self.reload_weights(weights_iterator=unpack_buckets(plan, buckets), is_checkpoint_format=True)
        return {
            "tensors": float(len(plan.slots)),
            "receive_s": received - started,
            "reload_s": time.perf_counter() - received,
        }
