"""The served policy: vLLM's asynchronous engine, and how it follows a training run.

Concurrent HTTP requests each become a request in vLLM's AsyncLLM, which batches them on the fly
(continuous batching): nothing is serialised behind a lock. Serving modes:

- `--model DIR`: serve one checkpoint; policy version = its step when it is a training checkpoint.
- `--run-dir RUN_DIR`: follow a training run. A watcher polls `RUN_DIR/checkpoints/` and, when a
  newer complete checkpoint appears, reloads it in place: new requests wait, the requests in flight
  finish on the old weights, `reload_weights` reads the folder, prefix and encoder caches are
  cleared, then the waiting requests go on. The pause keeps each answer's reported version exact
  and avoids clearing vLLM's encoder cache under running requests (which vLLM warns can desync
  it); it lasts about one answer plus the read (0.02 s for the tiny model, seconds for 7B).
  Answers therefore come from the newest *saved* policy; every answer reports the version
  (training step) and checkpoint that produced it.
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

from learner.checkpoint import latest_checkpoint, read_manifest
from reward.rewards import extract_answer
from rollout.audio import SAMPLE_RATE
from rollout.prompt import PromptConfig, render_prompt
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
    ):
        if (model_dir is None) == (run_dir is None):
            raise ValueError("give exactly one of --model DIR or --run-dir RUN_DIR")
        self.run_dir = Path(run_dir) if run_dir else None
        self.prompt, self.sampling, self.engine_config = prompt, sampling, engine
        start = Path(model_dir) if model_dir else self._wait_for_first_checkpoint()
        vllm_env(engine)
        from transformers import AutoProcessor
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_args(str(start), engine, disable_log_stats=True))
        )
        self.processor = AutoProcessor.from_pretrained(start)
        self.forbidden = forbidden_token_ids(self.processor.tokenizer)
        step = _step_of(start)
        self.info = PolicyInfo(
            str(start), step, step, str(start), time.time(), str(self.run_dir) if self.run_dir else None
        )
        self.poll_s = poll_s
        self._reload_lock = asyncio.Lock()
        self.in_flight = 0
        # A reload closes admission, waits for the requests in flight to drain, then reopens.
        self._admitting, self._drained = asyncio.Event(), asyncio.Event()
        self._admitting.set()
        self._drained.set()

    def _wait_for_first_checkpoint(self, timeout_s: float = 3600) -> Path:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            found = latest_checkpoint(self.run_dir / "checkpoints")
            if found is not None:
                return found
            log.info("waiting for the first checkpoint in %s ...", self.run_dir)
            time.sleep(5)
        raise TimeoutError(f"no checkpoint appeared in {self.run_dir} within {timeout_s:.0f} s")

    @property
    def healthy(self) -> bool:
        """False once vLLM's engine process has died (nothing but a restart brings it back)."""
        return not self.engine.errored

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

    async def reload(self, folder: Path) -> None:
        """Load a checkpoint's weights in place; requests in flight finish on the old weights first."""
        async with self._reload_lock:
            started = time.perf_counter()
            self._admitting.clear()
            try:
                await self._unless_dead(self._drained.wait())
                await self._unless_dead(
                    self.engine.collective_rpc(
                        "reload_weights", kwargs={"weights_path": str(folder), "is_checkpoint_format": True}
                    )
                )
                await self._unless_dead(self.engine.reset_prefix_cache())
                await self._unless_dead(self.engine.reset_encoder_cache())
                step = _step_of(folder)
                self.info = PolicyInfo(
                    self.info.model, step, step, str(folder), time.time(), self.info.run_dir
                )
            finally:
                self._admitting.set()
            log.info("now serving %s (version %d) after %.2f s", folder, step, time.perf_counter() - started)

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
        while not self._admitting.is_set():  # a reload is on (re-checked: another may start)
            await self._unless_dead(self._admitting.wait())
        self.in_flight += 1  # no await since the check: a reload cannot slip in between
        self._drained.clear()
        info = self.info
        try:
            async for output in self.engine.generate(
                {"prompt": prompt, "multi_modal_data": {"audio": (waveform, SAMPLE_RATE)}},
                params,
                request_id=uuid.uuid4().hex,
            ):
                final = output
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._drained.set()
        responses = [o.text for o in final.outputs]
        answers = [extract_answer(r) for r in responses]
        return {
            "answer": answers[0],
            "valid": answers[0] in choices,
            "response": responses[0],
            "samples": [
                {"answer": a, "valid": a in choices, "response": r}
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
