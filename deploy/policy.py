"""The served policy: vLLM's asynchronous engine, and how it follows a training run.

Concurrent HTTP requests each become a request in vLLM's AsyncLLM, which batches them on the fly
(continuous batching): nothing is serialised behind a lock. Serving modes:

- `--model DIR`: serve one checkpoint; policy version = its step when it is a training checkpoint.
- inside a training job (`train --serve`): one more receiver of the learner's weight transfer
  (vLLM's API, as the rollout workers): each update is applied whole between requests (new
  requests wait, those in flight finish first), so answers come from the newest policy version,
  at most one step behind, and carry the exact version that produced them.
- `--run-dir RUN_DIR`: follow a training run. A watcher polls `RUN_DIR/checkpoints/` and, when a
  newer complete checkpoint appears, loads it in place through the same weight-transfer protocol
  (`deploy/checkpoint_transfer.py`): new requests wait, the requests in flight finish on the old
  weights, the folder is streamed in chunks, prefix and encoder caches are cleared, then the
  waiting requests go on. The pause keeps each answer's reported version exact
  and avoids clearing vLLM's encoder cache under running requests (which vLLM warns can desync
  it); it lasts about one answer plus the read (0.02 s for the tiny model, seconds for 7B).
  Answers therefore come from the newest *saved* policy; every answer reports the version
  (training step) and checkpoint that produced it. Before the run's first checkpoint the
  server answers from the run's starting model (its `model.path`) as version 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from families import load_processor
from learner.checkpoint import latest_checkpoint, read_manifest
from reward.rewards import extract_answer
from rollout.audio import SAMPLE_RATE
from rollout.prompt import PromptConfig, render_prompt
from rollout.question import task_of, valid_answer
from rollout.sampling import SamplingConfig, forbidden_token_ids, vllm_sampling_params
from rollout.vllm_engine import EngineConfig, engine_args, vllm_env

log = logging.getLogger("audio_grpo.serve")


class EngineStopped(RuntimeError):
    """vLLM's engine process has died; only a restart of the server brings it back."""


@dataclass
class PolicyInfo:
    model: str
    version: int
    step: int
    checkpoint: str
    loaded_at: float
    run_dir: str | None = None


def _step_of(folder: Path) -> int:
    try:
        return int(read_manifest(folder)["step"])
    except (FileNotFoundError, KeyError, ValueError):
        return 0


class PolicyEngine:
    """The served policy. `engine`, `prompt` and `sampling` are the training run's own settings when
    following a run (the CLI reads its config.yaml), so answers are asked and decoded as in training."""

    def __init__(
        self,
        model_dir: str | None = None,
        run_dir: str | None = None,
        *,
        engine: EngineConfig = EngineConfig(),
        prompt: PromptConfig = PromptConfig(),
        sampling: SamplingConfig = SamplingConfig(),
        poll_s: float = 2.0,
        weight_transfer: str = "",
        run_start_model: str | None = None,
    ):
        """`weight_transfer`: the backend when the policy receives live updates ("" = none).
        `run_start_model`: the followed run's starting model (its `model.path`), served as policy
        version 0 until the run's first checkpoint lands."""
        if (model_dir is None) == (run_dir is None):
            raise ValueError("give exactly one of --model DIR or --run-dir RUN_DIR")
        self.run_dir = Path(run_dir) if run_dir else None
        self.prompt, self.sampling, self.engine_config = prompt, sampling, engine
        self.poll_s = poll_s
        start = Path(model_dir) if model_dir else self._start_of_run(run_start_model)
        vllm_env(engine, served=True)
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        weight_transfer = weight_transfer or ("gloo" if run_dir else "")  # checkpoints load through it
        from rollout.weight_transfer import transfer_engine_args

        extra = transfer_engine_args(weight_transfer)
        self.engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_args(str(start), engine, disable_log_stats=True, **extra))
        )
        self.processor = load_processor(start)
        self.forbidden = forbidden_token_ids(self.processor)
        step = _step_of(start)
        self.info = PolicyInfo(
            str(start), step, step, str(start), time.time(), str(self.run_dir) if self.run_dir else None
        )
        self._reload_lock = asyncio.Lock()
        self.in_flight = 0
        # A reload closes admission, waits for the requests in flight to drain, then reopens.
        self._admitting, self._drained = asyncio.Event(), asyncio.Event()
        self._admitting.set()
        self._drained.set()
        self.broken: str | None = None  # a live update failed half-way: the weights are mixed
        self._updating, self._session = False, None  # the live update in progress (see start_update)

    def _start_of_run(self, run_start_model: str | None) -> Path:
        """The run's newest checkpoint; before its first one, its starting model (so the engine loads
        while the run trains, not after its first save); else the first checkpoint, waited for."""
        newest = latest_checkpoint(self.run_dir / "checkpoints")
        if newest is not None:
            return newest
        if run_start_model and Path(run_start_model).is_dir():
            log.info("no checkpoint in %s yet: serving the run's starting model as version 0", self.run_dir)
            return Path(run_start_model)
        return self._wait_for_first_checkpoint()

    def _wait_for_first_checkpoint(self, timeout_s: float = 3600) -> Path:
        deadline = time.time() + timeout_s
        log.info("waiting for the first checkpoint in %s ...", self.run_dir)
        while time.time() < deadline:
            found = latest_checkpoint(self.run_dir / "checkpoints")
            if found is not None:
                return found
            time.sleep(self.poll_s)  # the follower's own poll interval (--poll-s)
        raise TimeoutError(f"no checkpoint appeared in {self.run_dir} within {timeout_s:.0f} s")

    @property
    def healthy(self) -> bool:
        """False once vLLM's engine process has died or a live update failed half-way (nothing but a
        restart brings it back)."""
        return not self.engine.errored and self.broken is None

    async def _unless_dead(self, awaitable):
        """Await `awaitable`, but raise EngineStopped once the engine has died: a call in flight
        when vLLM's engine process dies is never answered, and would otherwise wait forever."""
        task = asyncio.ensure_future(awaitable)
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if not self.healthy:
                task.cancel()
                raise EngineStopped("the policy engine has stopped")

    async def _pause(self) -> None:
        """Close admission (new requests wait) and wait until the requests in flight are done."""
        self._admitting.clear()
        await self._unless_dead(self._drained.wait())

    async def reload(self, folder: Path) -> None:
        """Load a checkpoint's weights in place through the weight-transfer protocol (as a live
        update: requests in flight finish on the old weights first, new ones wait)."""
        from deploy.checkpoint_transfer import send_checkpoint

        async with self._reload_lock:
            started, step = time.perf_counter(), _step_of(folder)
            loop = asyncio.get_running_loop()
            await asyncio.to_thread(send_checkpoint, self, folder, step, loop, 64 * 1024**2, 600.0)
            log.info("now serving %s (version %d) after %.2f s", folder, step, time.perf_counter() - started)

    # -- live updates: vLLM's weight-transfer protocol, driven by the learner's trainer engine ---------

    async def join_weight_transfer(self, init_info: dict[str, Any]) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        from rollout.weight_transfer import TransportError

        await self._unless_dead(self.engine.init_weight_transfer_engine(WeightTransferInitRequest(init_info)))
        problems = [p for p in await self.engine.collective_rpc("weight_transport_problem") if p]
        if problems:
            raise TransportError("; ".join(problems))

    async def start_update(self, timeout_s: float) -> None:
        """New requests wait; the requests in flight finish on the old weights first. After an update
        the sender abandoned (another receiver failed), go on from where this one stands."""
        if self.broken:
            raise RuntimeError(f"this policy's weights cannot be trusted: {self.broken}")
        if not self._updating:
            self._updating = True
            await asyncio.wait_for(self._pause(), timeout_s)
        deadline = time.monotonic() + timeout_s
        while self._session == "receiving" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # an abandoned receive ends at its collective's timeout
        if self._session == "receiving" or self.broken:
            raise RuntimeError(f"the previous update did not end cleanly: {self.broken or 'still receiving'}")
        if self._session == "received":  # complete weights never finished: close vLLM's session
            await self._unless_dead(self.engine.finish_weight_update())
        self._session = None

    async def receive_update(self, update_info: dict[str, Any]) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        if not self._updating:
            raise RuntimeError("no weight update in progress: call start_weight_update first")
        self._session = "receiving"
        try:
            await self._unless_dead(self.engine.start_weight_update())
            await self._unless_dead(self.engine.update_weights(WeightTransferUpdateRequest(update_info)))
        except BaseException as err:
            self.broken = f"live update failed half-way: {type(err).__name__}: {err}"
            self._session = "failed"
            raise
        self._session = "received"

    async def finish_update(self, version: int, checkpoint: str = "(live)") -> None:
        """Apply the update whole: finish vLLM's session, drop caches, adopt `version`, admit."""
        await self._unless_dead(self.engine.finish_weight_update())
        await self._unless_dead(self.engine.reset_prefix_cache())
        await self._unless_dead(self.engine.reset_encoder_cache())
        self.info = PolicyInfo(self.info.model, version, version, checkpoint, time.time(), self.info.run_dir)
        self._updating, self._session = False, None
        self._admitting.set()

    async def follow(self) -> None:
        """Reload each newer checkpoint of the run as it appears (runs until cancelled)."""
        while True:
            await asyncio.sleep(self.poll_s)
            if not self.healthy:
                return  # nothing to reload into; /healthz reports it
            try:
                newest = latest_checkpoint(self.run_dir / "checkpoints")
                if newest is not None and _step_of(newest) > self.info.step:
                    await self.reload(newest)
            except Exception:  # a checkpoint removed while reading, etc.: try again next poll
                log.exception("checkpoint watch failed; retrying")

    async def admit(self) -> PolicyInfo:
        """Count a request in (waiting while an update is on); returns the policy that will answer.
        Pair with `release()` once the request's last output is out."""
        while not self._admitting.is_set():  # an update is on (re-checked: another may start)
            await self._unless_dead(self._admitting.wait())
        self.in_flight += 1  # no await since the check: an update cannot slip in between
        self._drained.clear()
        return self.info

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._drained.set()

    async def answer(
        self,
        waveform: np.ndarray,
        question: str,
        choices: list[str],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,  # None: the policy's sampling.max_tokens
        n: int = 1,
    ) -> dict[str, Any]:
        from vllm.sampling_params import RequestOutputKind

        started = time.perf_counter()
        prompt = render_prompt(self.processor, question, choices, thinking=self.prompt.thinking)
        params = vllm_sampling_params(
            replace(
                self.sampling, n=n, temperature=temperature, max_tokens=max_tokens or self.sampling.max_tokens
            ),
            self.forbidden,
            output_kind=RequestOutputKind.FINAL_ONLY,  # one output at the end, holding all n samples
        )
        final = None
        info = await self.admit()
        try:
            async for output in self.engine.generate(
                {"prompt": prompt, "multi_modal_data": {"audio": (waveform, SAMPLE_RATE)}},
                params,
                request_id=uuid.uuid4().hex,
            ):
                final = output
        finally:
            self.release()
        responses = [o.text for o in final.outputs]
        answers = [extract_answer(r) for r in responses]
        return {
            "answer": answers[0],
            "task": task_of(choices),
            "valid": valid_answer(answers[0], choices),
            "response": responses[0],
            "samples": [
                {"answer": a, "valid": valid_answer(a, choices), "response": r}
                for a, r in zip(answers, responses, strict=True)
            ]
            if n > 1
            else None,
            "policy_version": info.version,
            "step": info.step,
            "checkpoint": info.checkpoint,
            "timing": {"generate_s": time.perf_counter() - started},
        }

    def shutdown(self) -> None:
        self.engine.shutdown()
