"""A gloo backend for vLLM's weight-transfer API, so CPU runs move weights the way GPU runs do.

vLLM ships NCCL (and CUDA IPC) engines for its weight-transfer protocol: the trainer calls
`start_weight_update`, `update_weights` (one or more chunks) and `finish_weight_update` on the
inference engines, which reload the received weights layer by layer inside one session. Those
engines need CUDA. This module adds the same protocol over torch's gloo process group, registered
in vLLM's engine registries under the name "gloo" by the general-plugin entry point
`audio_grpo_gloo` (pyproject.toml), which vLLM loads in every process it starts. This module is the
shared wire format and the inference (worker) side; `rollout/gloo_sender.py` is the trainer side.

Wire format (both sides derive it from the update's metadata, so nothing else travels):
1. a handshake: [MAGIC, parameter count, total bytes], which the receivers check before they touch
   any weight (a broken transport or a different plan is an error, never wrong weights);
2. chunks of about `bucket_bytes`: consecutive parameters packed as bytes, cut after the parameter
   that crosses the limit (vLLM's packed NCCL rule). The receiver allocates one chunk at a time and
   hands views of it to the model's loader; memory is bounded by a few chunks, never the model.

Fault hooks (`set_fault`) are ours, for tests: a receiver that raises or hangs after N chunks, a
sender whose transport is disabled.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta

import torch
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from rollout import vllm_fixes

DEFAULT_BUCKET_BYTES = 256 * 1024**2
MAGIC = 0x5EED
BACKEND = "gloo"
FAULT: dict = {"kind": None, "after_chunks": 0}  # see set_fault


def set_fault(kind: str | None, after_chunks: int = 0) -> None:
    """Test hook for this process: "raise" or "hang" (receiver, after `after_chunks` chunks),
    "disable" (the sender's transport reports itself disabled, as PyNccl does), None to clear."""
    FAULT.update(kind=kind, after_chunks=after_chunks)


class _KeptLayersFilter(logging.Filter):
    """A LoRA run's updates carry only the layers LoRA touches; vLLM's layer-wise reload then warns
    "Failed to load weights" for every other layer (hundreds per update on a 7B model) while it
    keeps their weights, which is what the update means. Dropped; a transfer that misses a weight
    it should carry is caught by the tests that compare engine output with the learner's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to load weights" not in str(record.msg)


def register() -> None:
    """vLLM general-plugin entry point, run in every vLLM process: add the gloo engines to vLLM's
    registries; each model family's process-wide fixes (the Omni families without torchvision); our
    fix to vLLM's CPU experts after a weight update (`rollout/vllm_fixes.py`). Idempotent."""
    from families import install_runtime_support

    install_runtime_support()
    vllm_fixes.install()
    reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _KeptLayersFilter) for f in reload_log.filters):
        reload_log.addFilter(_KeptLayersFilter())
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "GlooWeightTransferEngine")
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(
            BACKEND, "rollout.gloo_sender", "GlooTrainerWeightTransferEngine"
        )


# -- the plan both sides derive from the metadata ------------------------------------------------


def nbytes(shape, dtype: torch.dtype) -> int:
    numel = 1
    for d in shape:
        numel *= int(d)
    return numel * dtype.itemsize


def plan_chunks(sizes: list[int], bucket_bytes: int) -> list[range]:
    """Consecutive index ranges; a chunk closes after the tensor that takes it past `bucket_bytes`."""
    chunks, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        total += size
        if total > bucket_bytes:
            chunks.append(range(start, i + 1))
            start, total = i + 1, 0
    if start < len(sizes):
        chunks.append(range(start, len(sizes)))
    return chunks


class BufferStats:
    """Peak bytes of transfer buffers alive at once (a tensor counts until its last view is gone),
    and seconds per phase of the last update (`timed`)."""

    def __init__(self):
        self.live = self.peak = 0
        self.seconds: dict[str, float] = {}

    def timed(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - since
        return now

    def hold(self, n: int) -> None:
        self.live += n
        self.peak = max(self.peak, self.live)

    def release(self, n: int) -> None:
        self.live -= n

    def track(self, tensor: torch.Tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        self.hold(n)
        weakref.finalize(tensor, self.release, n)

    def reset(self) -> None:
        self.peak, self.seconds = self.live, {}


class GlooGroup:
    """A private gloo group (rank 0: the trainer) over its own TCPStore, with a timeout on every
    operation, apart from vLLM's and DeepSpeed's torch.distributed state."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float):
        from torch.distributed import PrefixStore, ProcessGroupGloo, TCPStore

        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world_size = rank, world_size
        self.store = TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout)
        options = ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [ProcessGroupGloo.create_device(hostname=host)]
        self.group = ProcessGroupGloo(PrefixStore("weights", self.store), rank, world_size, options)

    @property
    def disabled(self) -> bool:  # the attribute vLLM's PyNccl sets when it cannot work
        return FAULT["kind"] == "disable"

    def broadcast(self, tensor: torch.Tensor) -> None:
        self.group.broadcast(tensor, 0).wait()

    def broadcast_async(self, tensor: torch.Tensor):
        """Start a broadcast; `.wait()` on the result (raises on timeout or a lost peer)."""
        return self.group.broadcast(tensor, 0)


def handshake(metas: list[ParamMeta]) -> torch.Tensor:
    return torch.tensor([MAGIC, len(metas), sum(nbytes(m.shape, m.dtype) for m in metas)], dtype=torch.int64)


# -- the inference side (inside vLLM's worker) ----------------------------------------------------


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 600.0


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]

    def metas(self) -> list[ParamMeta]:
        return [
            ParamMeta(n, getattr(torch, d), tuple(s))
            for n, d, s in zip(self.names, self.dtype_names, self.shapes, strict=True)
        ]


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Worker side: receive chunks and load them with vLLM's layer-wise reload (one session per
    update, opened only after the handshake proved the transport and the plan)."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, config, vllm_config, device, model):
        super().__init__(config, vllm_config, device, model)
        self.group: GlooGroup | None = None
        self.bucket_bytes = DEFAULT_BUCKET_BYTES
        self.stats = BufferStats()
        self._reloading = False

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        self.shutdown()
        rank = init_info.rank_offset + self.parallel_config.rank
        self.bucket_bytes = init_info.bucket_bytes
        self.group = GlooGroup(
            init_info.master_address, init_info.master_port, rank, init_info.world_size, init_info.timeout_s
        )

    def start_weight_update(self) -> None:
        self._reloading = False  # the layer-wise session opens in receive_weights, after the handshake
        self.stats.reset()

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialised: call init_transfer_engine first")
        metas = update_info.metas()
        got = torch.zeros(3, dtype=torch.int64)
        self.group.broadcast(got)
        if not torch.equal(got, handshake(metas)):
            raise RuntimeError(
                f"weight-transfer handshake mismatch: sender {got.tolist()}, expected "
                f"{handshake(metas).tolist()} (a different plan, or a broken transport)"
            )
        initialize_layerwise_reload(self.model)
        self._reloading = True
        sizes = [nbytes(m.shape, m.dtype) for m in metas]
        chunks = plan_chunks(sizes, self.bucket_bytes)
        # Double-buffered: chunk k+1 arrives (gloo's own thread) while chunk k loads.
        incoming = self._post(sum(sizes[i] for i in chunks[0])) if chunks else None
        clock = time.perf_counter()
        for index, chunk in enumerate(chunks):
            _receiver_fault(index)
            buffer, work = incoming
            work.wait()
            clock = self.stats.timed("receive_s", clock)
            if index + 1 < len(chunks):
                incoming = self._post(sum(sizes[i] for i in chunks[index + 1]))
            views, offset = [], 0
            for i in chunk:
                m = metas[i]
                views.append((m.name, buffer[offset : offset + sizes[i]].view(m.dtype).view(m.shape)))
                offset += sizes[i]
            del buffer  # the loader keeps the views it still needs (an incomplete layer)
            self.model.load_weights(views)
            clock = self.stats.timed("load_s", clock)

    def _post(self, size: int):
        buffer = torch.empty(size, dtype=torch.uint8)
        self.stats.track(buffer)
        return buffer, self.group.broadcast_async(buffer)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if self._reloading:
            started = time.perf_counter()
            finalize_layerwise_reload(self.model, self.model_config)
            self.stats.timed("finish_s", started)
            self._reloading = False

    def shutdown(self) -> None:
        self.group = None  # gloo closes its connections when the group is collected


def _receiver_fault(chunk: int) -> None:
    if FAULT["kind"] in ("raise", "hang") and chunk >= FAULT["after_chunks"]:
        if FAULT["kind"] == "raise":
            raise RuntimeError(f"injected fault: receiver fails at chunk {chunk}")
        time.sleep(3600)  # "hang": the sender and the driver must not wait for us


class TransportError(RuntimeError):
    """The weight transport cannot work (disabled or broken communicator): nothing was sent."""


def transport_problem(group, role: str) -> str | None:
    """Why a transfer group cannot work, or None. vLLM's PyNccl marks itself `disabled` (and
    `available` False) when NCCL cannot load, and then skips every broadcast without an error:
    the receivers would load uninitialised buffers. Checked on both sides before any weight moves."""
    if group is None or getattr(group, "disabled", False) or not getattr(group, "available", True):
        return f"the {role}'s weight transport ({type(group).__name__}) is disabled or not initialised"
    return None


class TransferWorkerExtension:
    """vLLM worker extension (`worker_extension_cls`): what we ask a worker about its transfer
    engine, by method name (an engine core in its own process takes names, not functions)."""

    def weight_transport_problem(self) -> str | None:
        engine = self.weight_transfer_engine
        group = getattr(engine, "group", None) or getattr(engine, "model_update_group", None)
        return transport_problem(group, "receiver")

    def weight_transfer_stats(self) -> dict[str, float]:
        stats = getattr(self.weight_transfer_engine, "stats", None) or BufferStats()
        return {"peak_bytes": float(stats.peak), **stats.seconds}

    def set_weight_transfer_fault(self, kind: str | None, after_chunks: int = 0) -> None:
        set_fault(kind, after_chunks)


def transfer_engine_args(backend: str) -> dict:
    """vLLM engine arguments that turn on its weight transfer with `backend` ("" = off)."""
    if not backend:
        return {}
    return {
        "weight_transfer_config": {"backend": backend},
        "worker_extension_cls": f"{__name__}.TransferWorkerExtension",
    }
