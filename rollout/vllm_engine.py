"""The rollout worker: one vLLM engine with audio input, generating groups of completions.

A plain class; `cluster/` wraps it as a Ray actor, and `audio-grpo eval` uses it directly. It
loads each clip once per request, renders R1-AQA's prompt, and asks vLLM for `n` samples per
question. Its weights are replaced in place through vLLM's weight-transfer API (the learner drives
`init_weight_transfer_engine`, `start_weight_update`, `update_weights`, `finish_weight_update`;
`rollout.weight_transfer` is the CPU backend); each finished update sets `policy_version`, and
a `PolicyGate` keeps generation away from a half-updated model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from families import load_processor
from rollout.audio import SAMPLE_RATE, AudioError, load_audio
from rollout.policy_gate import PolicyGate
from rollout.prompt import PromptConfig, render_prompt
from rollout.question import AudioQuestion, Completion, RolloutResult
from rollout.sampling import SamplingConfig, forbidden_token_ids, vllm_sampling_params

Dtype = Literal["bfloat16", "float16", "float32"]  # torch's names, the one spelling everywhere


@dataclass(frozen=True)
class EngineConfig:
    """vLLM engine settings, the same defaults for rollout workers, `eval` and `serve`."""

    dtype: Dtype = "bfloat16"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.85
    kv_cache_gib: float = 1.0  # CPU only: VLLM_CPU_KVCACHE_SPACE
    enforce_eager: bool | None = None  # None: CUDA graphs on GPU, eager on CPU (vLLM's CPU build)
    tensor_parallel_size: int = 1
    # Rollout workers only: vLLM's engine core inside the worker's process (fewer processes on
    # CPU). Serving always keeps it in its own process, so a dead engine is seen and reported.
    in_process: bool = True


def vllm_env(engine: EngineConfig, *, served: bool = False) -> None:
    """Process settings vLLM and the Hugging Face hub read once, on import: call before either.
    `served`: an AsyncLLM (its engine core always in a process of its own)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: a wrong path fails, never downloads
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(engine.kv_cache_gib))))
    if engine.tensor_parallel_size > 1:  # CPU only: vLLM's automatic binding wants a NUMA node per worker
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_split(engine.tensor_parallel_size))
    if served and engine.tensor_parallel_size == 1:
        # The model runs inside the engine-core process, as vLLM does on a GPU. Without this, vLLM's
        # CPU build starts one more process for it, whose reads spin on a core for a second after
        # each step: a served engine cost ~10 s of CPU to start and kept a core busy while used.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def cpu_split(parts: int) -> str:
    """This process's CPUs in `parts` contiguous lists, vLLM's "0,1|2,3" form (one per TP worker)."""
    cpus = sorted(os.sched_getaffinity(0))
    per = max(1, len(cpus) // parts)
    return "|".join(",".join(map(str, cpus[i * per : (i + 1) * per] or cpus[-1:])) for i in range(parts))


def eager(engine: EngineConfig) -> bool:
    """Whether vLLM runs eagerly: as configured, else only where CUDA graphs do not exist (CPU)."""
    if engine.enforce_eager is not None:
        return engine.enforce_eager
    import torch

    return not torch.cuda.is_available()


def engine_args(model_path: str, engine: EngineConfig, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """vLLM's engine arguments for `LLM(...)` and `AsyncEngineArgs(...)` alike (audio: one clip;
    the family's multimodal limits)."""
    from families import adapter_for

    # Tensor parallelism: the engine's workers are processes inside this worker's placement bundle
    # (which holds their GPUs). Inside a Ray placement group vLLM would pick its Ray executor and ask
    # the group for bundles of its own.
    executor = {"distributed_executor_backend": "mp"} if engine.tensor_parallel_size > 1 else {}
    return {
        "model": model_path,
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "limit_mm_per_prompt": dict(adapter_for(model_path).vllm_mm_limits),  # a copy per engine
        "enforce_eager": eager(engine),
        "seed": seed,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        **executor,
        **extra,
    }


class RolloutWorker:
    def __init__(
        self,
        model_path: str,
        engine: EngineConfig = EngineConfig(),
        prompt: PromptConfig = PromptConfig(),
        seed: int = 0,
        weight_transfer: str = "",
        wait_s: float = 600.0,
    ):
        """`weight_transfer`: the backend of vLLM's weight transfer ("gloo", "nccl"; "" = none).
        `wait_s`: how long a request waits for a weight update in progress."""
        vllm_env(engine)
        if engine.in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.model_path, self.prompt = model_path, prompt
        from rollout.weight_transfer import transfer_engine_args

        self.llm = LLM(**engine_args(model_path, engine, seed, **transfer_engine_args(weight_transfer)))
        self.processor = load_processor(model_path)
        self.forbidden = forbidden_token_ids(self.processor)
        self.policy_version = 0
        self.gate, self.wait_s = PolicyGate(), wait_s
        self._session: str | None = None  # this update's receive: "receiving", "received", "failed"

    def generate(
        self,
        questions: list[AudioQuestion],
        sampling: SamplingConfig,
        *,
        greedy: bool = False,
        want_logprobs: bool = False,
    ) -> list[RolloutResult]:
        """Completions for each question (one entry per question, in order)."""
        results = [RolloutResult(q.id, policy_version=self.policy_version) for q in questions]
        requests, owners = [], []
        for i, q in enumerate(questions):
            try:
                wave = load_audio(q.audio_path)
            except AudioError as err:
                results[i].error = str(err)
                continue
            prompt = render_prompt(self.processor, q.question, q.choices, thinking=self.prompt.thinking)
            requests.append({"prompt": prompt, "multi_modal_data": {"audio": (wave, SAMPLE_RATE)}})
            owners.append(i)
        if requests:
            with self.gate.generating(self.wait_s):
                outputs = self.llm.generate(
                    requests,
                    vllm_sampling_params(sampling, self.forbidden, greedy=greedy, logprobs=want_logprobs),
                    use_tqdm=False,
                )
            for owner, output in zip(owners, outputs, strict=True):
                for sample in output.outputs:
                    logprobs = None
                    if want_logprobs and sample.logprobs is not None:
                        logprobs = [
                            step[t].logprob for step, t in zip(sample.logprobs, sample.token_ids, strict=True)
                        ]
                    # token_ids keep the end token vLLM stopped on: the learner trains on it too.
                    results[owner].completions.append(
                        Completion(list(sample.token_ids), sample.text, logprobs)
                    )
        return results

    # -- vLLM's weight-transfer protocol (the learner's trainer engine calls these) -----------------

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        """Join the learner's transfer group (again, after a worker was replaced); a transport that
        cannot work is an error now, before any weight moves."""
        from rollout.weight_transfer import TransportError

        self.llm.init_weight_transfer_engine({"init_info": init_info})
        problems = [p for p in self.llm.collective_rpc("weight_transport_problem") if p]
        if problems:
            raise TransportError("; ".join(problems))

    def start_weight_update(self) -> None:
        """Open an update: new requests wait, the ones in flight finish first. After an update that
        the sender abandoned (another receiver failed), this one goes on from where it stands."""
        self.gate.open_update(self.wait_s)
        deadline = time.monotonic() + self.wait_s
        while self._session == "receiving" and time.monotonic() < deadline:
            time.sleep(0.05)  # the abandoned receive ends at its collective's timeout
        if self._session == "receiving":
            raise TimeoutError(f"the previous weight update still receives after {self.wait_s:.0f}s")
        self.gate.require_update()  # raises if that receive failed (the gate is broken then)
        if self._session == "received":  # complete weights, never finished: close vLLM's session
            self.llm.finish_weight_update()
        self._session = None

    def update_weights(self, update_info: dict[str, Any]) -> None:
        """Receive and load the update's weights (vLLM's layer-wise reload, in one session; vLLM's
        session opens only now, so a sender that fails before sending touches no weight)."""
        self.gate.require_update()
        self._session = "receiving"
        try:
            self.llm.start_weight_update()
            self.llm.update_weights({"update_info": update_info})
        except BaseException as err:
            self.gate.fail_update(f"weight update failed half-way: {type(err).__name__}: {err}")
            raise
        finally:
            self._session = "received" if self.gate.broken is None else "failed"

    def finish_weight_update(self, version: int) -> None:
        """Finish the session, drop caches computed with the old weights, adopt `version`."""
        self.gate.require_update()
        try:
            self.llm.finish_weight_update()
        except BaseException as err:
            self.gate.fail_update(f"weight update failed to finish: {type(err).__name__}: {err}")
            raise
        self._session = None
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()  # else the next audio request dies: "Encoder cache miss"
        self.policy_version = version
        self.gate.close_update()

    def set_sync_fault(self, kind: str | None, after_chunks: int = 0) -> None:
        """Test hook: make this worker's next receive fail (`rollout.weight_transfer.set_fault`)."""
        self.llm.collective_rpc("set_weight_transfer_fault", args=(kind, after_chunks))

    def transfer_stats(self) -> dict[str, float]:
        """The last update on this engine: the most bytes of transfer buffers alive at once on any
        of its vLLM workers, seconds per phase (receive, load, finish) on the first, and how many
        workers received it (the tensor-parallel size)."""
        stats = self.llm.collective_rpc("weight_transfer_stats")
        return {**stats[0], "peak_bytes": max(s["peak_bytes"] for s in stats), "workers": len(stats)}

    def get_policy_version(self) -> int:
        return self.policy_version
