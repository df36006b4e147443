"""The memory plan's rollout side: one vLLM engine's weights, profiling peak and KV cache inside
its `gpu_memory_utilization` share, and the transfer buffers and CUDA context outside it (the live
endpoint's is the same)."""

from __future__ import annotations

from cluster.config import RunConfig
from cluster.plan_units import (
    CUDA_CONTEXT,
    GIB,
    PROMPT_TEXT_TOKENS,
    ActorPlan,
    ModelShape,
    Need,
    dtype_bytes,
    transfer_chunk,
)


def rollout_needs(config: RunConfig, shape: ModelShape, gpu_bytes: float) -> tuple[list[Need], float]:
    """One vLLM engine's memory inside its `gpu_memory_utilization` share, and the KV cache left."""
    engine, b = config.rollout.engine, dtype_bytes(config.rollout.engine.dtype)
    batched = max(engine.max_model_len, 8192)  # vLLM's profiling batch of tokens
    profile = batched * (4 * shape.hidden + 3 * shape.intermediate) * b + 256 * shape.vocab * 4
    needs = [Need("weights", shape.params * b), Need("profiling peak (activations, sampler)", profile)]
    on_gpu = config.rollout.gpus_per_worker > 0
    if on_gpu and not engine.enforce_eager:
        needs.append(Need("CUDA graphs", 1.0 * GIB))
    used = sum(n.nbytes for n in needs)
    kv = engine.gpu_memory_utilization * gpu_bytes - used if on_gpu else engine.kv_cache_gib * GIB
    return needs, kv


def kv_bytes_per_token(config: RunConfig, shape: ModelShape) -> int:
    return 2 * shape.layers * shape.kv_width * dtype_bytes(config.rollout.engine.dtype)


def rollout_plan(config: RunConfig, shape: ModelShape, gpu: float, on_gpu: bool, host: float) -> ActorPlan:
    needs, kv = rollout_needs(config, shape, gpu)
    engine = config.rollout.engine
    group_tokens = config.sampling.n * (shape.audio_tokens + PROMPT_TEXT_TOKENS + config.sampling.max_tokens)
    per_token = kv_bytes_per_token(config, shape)
    capacity = gpu if on_gpu else host
    plan = ActorPlan(
        "rollout worker", config.rollout.num_workers, needs + [Need("KV cache", max(kv, 0))], capacity, [], []
    )
    tokens = max(kv, 0) / per_token
    plan.notes.append(
        f"KV cache holds {tokens:.0f} tokens: {tokens * config.sampling.n / group_tokens:.0f} completions "
        f"of prompt + sampling.max_tokens at once ({config.sampling.n} per question)"
    )
    weights = shape.params * dtype_bytes(engine.dtype)
    if on_gpu and weights > engine.gpu_memory_utilization * gpu:
        plan.problems.append(
            f"one GPU cannot hold this engine: its weights are {weights / GIB:.1f} GiB, its share "
            f"(rollout.engine.gpu_memory_utilization {engine.gpu_memory_utilization}) is "
            f"{engine.gpu_memory_utilization * gpu / GIB:.1f} GiB; an engine over several GPUs "
            "(rollout.engine.tensor_parallel_size) is not supported yet: a larger GPU"
        )
    elif kv < group_tokens * per_token:
        setting = "rollout.engine.gpu_memory_utilization" if on_gpu else "rollout.engine.kv_cache_gib"
        plan.problems.append(
            f"the KV cache ({max(kv, 0) / GIB:.2f} GiB) cannot hold one question's {config.sampling.n} "
            f"completions ({group_tokens * per_token / GIB:.2f} GiB): raise {setting} or lower "
            "sampling.max_tokens"
        )
    chunk, why = transfer_chunk(config, shape)
    if why:
        plan.notes.append(why)
    if on_gpu:
        outside = CUDA_CONTEXT + 2 * chunk  # NCCL receive buffers
        plan.needs.append(Need("outside vLLM's share: CUDA context + transfer buffers", outside))
        if engine.gpu_memory_utilization * gpu + outside > gpu:
            plan.problems.append(
                f"rollout.engine.gpu_memory_utilization {engine.gpu_memory_utilization} leaves "
                f"{(1 - engine.gpu_memory_utilization) * gpu / GIB:.1f} GiB, the transfer buffers and CUDA "
                f"context need {outside / GIB:.1f} GiB: lower it or sync.bucket_mb"
            )
    return plan
