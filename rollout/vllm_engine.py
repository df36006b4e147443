"""The rollout worker: one vLLM engine with audio input, generating groups of completions.

A plain class; `cluster/` wraps it as a Ray actor, and `audio-grpo eval` uses it directly. It
loads each clip once per request, renders R1-AQA's prompt, and asks vLLM for `n` samples per
question. Its weights are replaced in place by the learner's broadcasts (`rollout.weight_sync`),
each of which bumps `policy_version`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from rollout.audio import SAMPLE_RATE, AudioError, load_audio
from rollout.prompt import render_prompt
from rollout.question import AudioQuestion
from rollout.sampling import SamplingConfig, forbidden_token_ids


@dataclass
class EngineConfig:
    """vLLM engine settings (the rest of vLLM's defaults apply)."""

    dtype: str = "bfloat16"
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.85
    kv_cache_gib: float = 1.0  # CPU only: VLLM_CPU_KVCACHE_SPACE
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    seed: int = 0
    in_process: bool = True  # run vLLM's engine core inside this process (fewer processes on CPU)


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None


@dataclass
class RolloutResult:
    """The `n` completions of one question, and the policy version that produced them."""

    question_id: str
    completions: list[Completion] = field(default_factory=list)
    policy_version: int = 0
    error: str | None = None  # e.g. the audio could not be loaded: the question is dropped, not retried


class RolloutWorker:
    def __init__(self, model_path: str, engine: EngineConfig | None = None, thinking: bool = False):
        engine = engine or EngineConfig()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(engine.kv_cache_gib))))
        if engine.in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.model_path, self.thinking = model_path, thinking
        self.llm = LLM(
            model=model_path,
            dtype=engine.dtype,
            max_model_len=engine.max_model_len,
            limit_mm_per_prompt={"audio": 1},
            enforce_eager=engine.enforce_eager,
            seed=engine.seed,
            tensor_parallel_size=engine.tensor_parallel_size,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            worker_extension_cls="rollout.weight_sync.WeightReceiver",
        )
        self.processor = self._processor()
        self.forbidden = forbidden_token_ids(self.processor.tokenizer)
        self.policy_version = 0

    def _processor(self):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.model_path)

    def _params(self, sampling: SamplingConfig, greedy: bool, want_logprobs: bool):
        from vllm import SamplingParams

        return SamplingParams(
            n=1 if greedy else sampling.n,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy or sampling.top_k <= 0 else sampling.top_k,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            logprobs=0 if want_logprobs else None,
            logit_bias={t: -100.0 for t in self.forbidden},
        )

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
            prompt = render_prompt(self.processor, q.question, q.choices, thinking=self.thinking)
            requests.append({"prompt": prompt, "multi_modal_data": {"audio": (wave, SAMPLE_RATE)}})
            owners.append(i)
        if requests:
            outputs = self.llm.generate(
                requests, self._params(sampling, greedy, want_logprobs), use_tqdm=False
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
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        backend: str = "gloo",
        timeout_s: float = 300.0,
    ) -> None:
        self.llm.collective_rpc("init_weight_sync", args=(host, port, rank, world_size, backend, timeout_s))

    def receive_weights(self, wire_plan: dict, version: int) -> dict[str, Any]:
        """Block until the learner's broadcast has arrived and been applied; return timings."""
        started = time.perf_counter()
        timings = self.llm.collective_rpc("receive_weights", args=(wire_plan,))[0]
        applied = time.perf_counter()
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()  # else the next audio request dies: "Encoder cache miss"
        self.policy_version = version
        end = time.perf_counter()
        return {**timings, "seconds": end - started, "cache_reset_s": end - applied, "version": version}

    def close_weight_sync(self) -> None:
        self.llm.collective_rpc("close_weight_sync")

    def get_policy_version(self) -> int:
        return self.policy_version

    def ping(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()
