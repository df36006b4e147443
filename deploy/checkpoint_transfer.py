"""Loading a saved checkpoint into the served engine through the same weight-transfer protocol as a
live update (`serve --run-dir` follows a run's checkpoints this way).

The server process plays the trainer: a `FolderSource` streams the checkpoint's safetensors one
tensor at a time (cast to the engine's dtype), our gloo trainer engine sends them in chunks to the
engine's own workers, and `LoopClient` turns the trainer engine's blocking client calls into the
PolicyEngine's coroutines on the server's event loop (start: requests drain; finish: caches reset,
new version). Memory stays at a few chunks, as in training.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}


class FolderSource(WeightSource):
    """A Hugging Face folder's safetensors (published names), read tensor by tensor."""

    def __init__(self, folder: Path, wire_dtype: torch.dtype):
        from safetensors import safe_open

        self.files = sorted(Path(folder).glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"{folder}: no *.safetensors files")
        self._meta: list[tuple[Path, ParamMeta]] = []
        for path in self.files:
            with safe_open(str(path), "pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    part = handle.get_slice(name)
                    dtype = _DTYPES[part.get_dtype()]
                    wire = wire_dtype if dtype.is_floating_point else dtype
                    self._meta.append((path, ParamMeta(name, wire, tuple(part.get_shape()))))

    def metadata(self) -> list[ParamMeta]:
        return [meta for _, meta in self._meta]

    def __iter__(self):
        from safetensors import safe_open

        handles: dict[Path, Any] = {}
        for path, meta in self._meta:
            if path not in handles:
                handles[path] = safe_open(str(path), "pt").__enter__()
            yield meta.name, handles[path].get_tensor(meta.name).to(meta.dtype)


class LoopClient:
    """vLLM's client protocol (blocking calls from the trainer engine's thread) over the policy's
    coroutines on `loop`, each bounded by `timeout_s`."""

    def __init__(
        self, policy, loop: asyncio.AbstractEventLoop, version: int, checkpoint: str, timeout_s: float
    ):
        self.policy, self.loop, self.timeout_s = policy, loop, timeout_s
        self.version, self.checkpoint = version, checkpoint

    def _run(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self.timeout_s)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._run(self.policy.join_weight_transfer(init_info))

    def start_weight_update(self) -> None:
        self._run(self.policy.start_update(self.timeout_s))

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._run(self.policy.receive_update(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._run(self.policy.finish_update(self.version, self.checkpoint))


def send_checkpoint(policy, folder: Path, version: int, loop, bucket_bytes: int, timeout_s: float) -> None:
    """Blocking (run it in a thread): load `folder` into `policy`'s engine as `version`."""
    from cluster.network import free_port
    from rollout.gloo_sender import GlooTrainerInitInfo, GlooTrainerWeightTransferEngine

    source = FolderSource(folder, getattr(torch, policy.engine_config.dtype))
    client = LoopClient(policy, loop, version, str(folder), timeout_s)
    init = GlooTrainerInitInfo("127.0.0.1", free_port(), 2, bucket_bytes, timeout_s, rank=0)
    engine = GlooTrainerWeightTransferEngine.trainer_init(init, client=client, source=source)
    try:
        engine.send_weights()
    finally:
        engine.shutdown()
