"""The rollout worker: one vLLM engine with audio input, generating groups of completions.

A plain class; `cluster/` wraps it as a Ray actor, and `audio-grpo eval` uses it directly. It
loads each clip once per request, renders R1-AQA's prompt, and asks vLLM for `n` samples per
question. Its weights are replaced in place by the learner's broadcasts (`rollout.weight_sync`),
each of which bumps `policy_version`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from rollout.audio import SAMPLE_RATE, AudioError, load_audio
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
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    # Rollout workers only: vLLM's engine core inside the worker's process (fewer processes on
    # CPU). Serving always keeps it in its own process, so a dead engine is seen and reported.
    in_process: bool = True


def vllm_env(engine: EngineConfig) -> None:
    """Process settings vLLM and the Hugging Face hub read once, on import: call before either."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: a wrong path fails, never downloads
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(engine.kv_cache_gib))))


def engine_args(model_path: str, engine: EngineConfig, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """vLLM's engine arguments for `LLM(...)` and `AsyncEngineArgs(...)` alike (audio: one clip)."""
    return {
        "model": model_path,
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "limit_mm_per_prompt": {"audio": 1},
        "enforce_eager": engine.enforce_eager,
        "seed": seed,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        **extra,
    }


class RolloutWorker:
    def __init__(
        self,
        model_path: str,
        engine: EngineConfig = EngineConfig(),
        prompt: PromptConfig = PromptConfig(),
        seed: int = 0,
    ):
        vllm_env(engine)
        if engine.in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from transformers import AutoProcessor
        from vllm import LLM

        self.model_path, self.prompt = model_path, prompt
        self.llm = LLM(
            **engine_args(model_path, engine, seed, worker_extension_cls="rollout.weight_sync.WeightReceiver")
        )
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.forbidden = forbidden_token_ids(self.processor.tokenizer)
        self.policy_version = 0

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

    # -- weight sync -------------------------------------------------------------------------------

    def init_weight_sync(
        self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float
    ) -> None:
        """Join the learner's broadcast group (the weight plan comes over it with the first update)."""
        self.llm.collective_rpc("init_weight_sync", args=(host, port, rank, world_size, backend, timeout_s))

    def receive_weights(self, version: int) -> dict[str, Any]:
        """Block until the learner's broadcast has arrived and been applied; return timings."""
        started = time.perf_counter()
        timings = self.llm.collective_rpc("receive_weights")[0]
        applied = time.perf_counter()
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()  # else the next audio request dies: "Encoder cache miss"
        self.policy_version = version
        end = time.perf_counter()
        return {**timings, "seconds": end - started, "cache_reset_s": end - applied, "version": version}

    def get_policy_version(self) -> int:
        return self.policy_version
