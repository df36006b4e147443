"""The learner's side of the weight transfer, through vLLM's trainer engines.

`PolicySource` is the policy as a vLLM `WeightSource`: parameters in the published checkpoint
names (what vLLM loads; with LoRA only the layers it touches, merged), cast to the rollout
engines' dtype, streamed in groups of about `bucket_bytes`; under ZeRO-3 each group is gathered,
sent and released before the next, so no rank ever holds the whole model twice. `WeightSender`
drives vLLM's trainer engine for the backend (vLLM's NCCL engine on GPU, our gloo engine on CPU,
both registered in vLLM's factory) on every learner rank and turns its outcome into a report the
driver acts on: which receivers failed, or a transport that cannot work (a clear error before any
weight is touched).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

from rollout.weight_transfer import BufferStats, TransportError, nbytes, plan_chunks, transport_problem


class PolicySource(WeightSource):
    """The learner's weights, one parameter group (about `group_bytes` on the wire) at a time."""

    def __init__(self, learner, wire_dtype: torch.dtype, group_bytes: int):
        from learner.lora import engine_weights

        self.learner, self.stats = learner, BufferStats()
        weights = engine_weights(learner.model)  # tied once; with LoRA the touched layers, merged
        self._meta = [
            ParamMeta(w.name, wire_dtype if w.params[0].is_floating_point() else w.params[0].dtype, w.shape)
            for w in weights
        ]
        sizes = [nbytes(m.shape, m.dtype) for m in self._meta]
        self._groups = [
            [(weights[i], self._meta[i]) for i in chunk] for chunk in plan_chunks(sizes, group_bytes)
        ]
        self._pass = None
        self._done = False

    def metadata(self) -> list[ParamMeta]:
        return self._meta

    def __iter__(self):
        self._pass, self._done = self._stream(), False
        return self._pass

    def _stream(self):
        for group in self._groups:
            params = [p for weight, _ in group for p in weight.params]
            gathered = sum(getattr(p, "ds_numel", 0) * p.element_size() for p in params)
            with self.learner.gathered(params):
                self.stats.hold(gathered)
                try:
                    for weight, meta in group:
                        source = weight.value()
                        tensor = source.to(meta.dtype)
                        if tensor.data_ptr() not in {p.data_ptr() for p in weight.params}:
                            self.stats.track(tensor)  # a cast or merged copy, alive while sent
                        yield meta.name, tensor
                finally:
                    self.stats.release(gathered)
        self._done = True

    def begin(self) -> None:
        self._pass, self._done = None, False

    def complete_pass(self) -> None:
        """Run this send's pass to its end (a fresh one if none started): the other ranks' gathers
        are collectives and wait for ours, whatever went wrong on the way."""
        if not self._done:
            for _ in self._pass if self._pass is not None else iter(self):
                pass


def sender_problem(engine) -> str | None:
    """Why the sender's communicator cannot work, or None (`rollout.weight_transfer.transport_problem`)."""
    if not engine.is_sender:
        return None
    return transport_problem(
        getattr(engine, "group", None) or getattr(engine, "model_update_group", None), "sender"
    )


def trainer_init_info(backend: str, rank: int, init: dict[str, Any]):
    """vLLM's trainer init info for `backend` ("gloo" or "nccl") from our one set of settings."""
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(
            init["master_address"],
            init["master_port"],
            init["world_size"],
            packed=True,
            packed_buffer_size_bytes=init["bucket_bytes"],
            packed_num_buffers=2,
            rank=rank,
        )
    from rollout.gloo_sender import GlooTrainerInitInfo

    return GlooTrainerInitInfo(**init, rank=rank)


def trainer_engine_factory():
    """vLLM's trainer-engine factory, with our plugins loaded (the gloo engine registers itself
    through vLLM's plugin entry point)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    return WeightTransferTrainerFactory


class WeightSender:
    """One learner rank's trainer engine (rank 0 sends, every rank gathers)."""

    def __init__(self, learner, backend: str, init: dict[str, Any], client, wire_dtype: str):
        self.rank, self.client = learner.rank, client
        self.source = PolicySource(learner, getattr(torch, wire_dtype), init["bucket_bytes"])
        self.engine = trainer_engine_factory().trainer_init(
            trainer_init_info(backend, learner.rank, init), client=client, source=self.source
        )
        if hasattr(self.engine, "stats"):
            self.engine.stats = self.source.stats  # one account of the sender's transfer memory
        problem = sender_problem(self.engine)
        if problem:
            raise TransportError(problem)

    def send(self, version: int) -> dict[str, Any]:
        """Send the current weights as `version`. Returns {"ok", "failed": {receiver: reason},
        "error", "fatal", timings}; a fatal outcome (the transport cannot work) is not retried."""
        started = time.perf_counter()
        self.source.begin()
        self.source.stats.reset()
        outcome: dict[str, Any] = {"ok": True, "failed": {}, "error": "", "fatal": False}
        try:
            problem = sender_problem(self.engine)
            if problem:
                raise TransportError(problem)
            if self.rank == 0:
                self.client.version = version
            self.engine.send_weights()
        except Exception as err:  # noqa: BLE001 - reported to the driver, which decides
            outcome.update(
                ok=False,
                failed=dict(getattr(err, "failed", {})),
                error=f"{type(err).__name__}: {err}",
                fatal=isinstance(err, TransportError),
            )
        finally:
            self.source.complete_pass()
        meta = self.source.metadata()
        outcome.update(
            send_s=time.perf_counter() - started,
            bytes=float(sum(nbytes(m.shape, m.dtype) for m in meta)),
            sender_peak_bytes=float(self.source.stats.peak),
            **{f"sender_{k}": v for k, v in self.source.stats.seconds.items()},
        )
        return outcome

    def shutdown(self) -> None:
        self.engine.shutdown()
