"""The trainer side of the gloo weight transfer (the wire format and the worker side:
`rollout/weight_transfer.py`), shaped like vLLM's NCCL trainer engine: rank 0 drives the inference
side through a client and broadcasts, every rank iterates the source (ZeRO-3 gathers together)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, TrainerInitInfo, TrainerWeightTransferEngine

from rollout.weight_transfer import (
    BACKEND,
    DEFAULT_BUCKET_BYTES,
    BufferStats,
    GlooGroup,
    GlooInitInfo,
    GlooUpdateInfo,
    TransportError,
    handshake,
    nbytes,
    plan_chunks,
)


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 600.0


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side, the shape of vLLM's NCCL trainer engine: rank 0 drives the inference side
    through `client` and broadcasts; every rank iterates the source (ZeRO-3 gathers together)."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source, is_sender: bool, init_info: GlooTrainerInitInfo):
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.info = init_info
        self.group: GlooGroup | None = None
        self.stats = BufferStats()

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
        if source is None:
            raise ValueError("the gloo trainer engine needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, init_info=init_info)
        if not engine.is_sender:
            return engine
        worker = GlooInitInfo(
            init_info.master_address,
            init_info.master_port,
            rank_offset=1,
            world_size=init_info.world_size,
            bucket_bytes=init_info.bucket_bytes,
            timeout_s=init_info.timeout_s,
        )
        with ThreadPoolExecutor(max_workers=1) as exe:  # both sides meet in the store: concurrently
            joined = exe.submit(client.init_weight_transfer_engine, asdict(worker))
            engine.group = GlooGroup(
                init_info.master_address, init_info.master_port, 0, init_info.world_size, init_info.timeout_s
            )
            joined.result()
        return engine

    def send_weights(self) -> None:
        meta = self.source.metadata()
        if not self.is_sender:
            for _ in self.source:  # only the gathers, in step with the sender
                pass
            return
        if self.group is None or self.group.disabled:
            raise TransportError("the gloo weight transport is disabled; no weight was sent")
        update = GlooUpdateInfo(
            [m.name for m in meta],
            [str(m.dtype).removeprefix("torch.") for m in meta],
            [list(m.shape) for m in meta],
        )
        self.stats.reset()
        self.client.start_weight_update()
        exe = ThreadPoolExecutor(max_workers=1)
        try:
            received = exe.submit(self.client.update_weights, asdict(update))
            try:
                self._broadcast(meta)
            except BaseException:
                received.result()  # the receivers' outcome first: it names who failed
                raise
            received.result()
        finally:
            exe.shutdown(wait=False)  # a receiver stuck in a collective must not hang us here
        self.client.finish_weight_update()

    def _broadcast(self, meta: list[ParamMeta]) -> None:
        self.group.broadcast(handshake(meta))
        sizes = [nbytes(m.shape, m.dtype) for m in meta]
        stream = iter(self.source)
        clock = time.perf_counter()
        in_flight = None  # (work, buffer): chunk k travels while chunk k+1 is gathered and packed
        for chunk in plan_chunks(sizes, self.info.bucket_bytes):
            parts = [self._checked(next(stream), meta[i]) for i in chunk]
            clock = self.stats.timed("gather_s", clock)
            if in_flight is not None:
                in_flight[0].wait()  # its buffer is the one we pack into next but one
            packed = self._send_buffer(sum(p.numel() for p in parts))
            torch.cat(parts, out=packed)
            del parts
            clock = self.stats.timed("pack_s", clock)
            in_flight = (self.group.broadcast_async(packed), packed)
            del packed
            clock = self.stats.timed("broadcast_s", clock)
        if in_flight is not None:
            in_flight[0].wait()
            self.stats.timed("broadcast_s", clock)
        for name, _ in stream:  # also closes the source's last gather
            raise ValueError(f"the weight source yielded {name!r} beyond its metadata")

    def _send_buffer(self, size: int) -> torch.Tensor:
        """The next of two send buffers, kept across updates (fresh memory each chunk costs a page
        fault per page, as much as the copy itself)."""
        self._turn = (getattr(self, "_turn", 0) + 1) % 2
        ring = self.__dict__.setdefault("_ring", [None, None])
        if ring[self._turn] is None or ring[self._turn].numel() < size:
            ring[self._turn] = torch.empty(size, dtype=torch.uint8)  # grows to the largest chunk
            self.stats.track(ring[self._turn])
        return ring[self._turn][:size]

    @staticmethod
    def _checked(item: tuple[str, torch.Tensor], expected: ParamMeta) -> torch.Tensor:
        name, tensor = item
        if name != expected.name or tensor.dtype != expected.dtype or tuple(tensor.shape) != expected.shape:
            raise ValueError(
                f"the weight source yielded {name!r} {tensor.dtype} {tuple(tensor.shape)}, "
                f"its metadata declared {expected}"
            )
        return tensor.contiguous().view(-1).view(torch.uint8)

    def shutdown(self) -> None:
        self.group = None
