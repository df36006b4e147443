"""The memory plan's rollout side: one vLLM engine's weights, profiling peak and KV cache inside
its `gpu_memory_utilization` share, and the transfer buffers and CUDA context outside it (the live
endpoint's is the same)."""

from __future__ import annotations

import dataclasses

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
    """One vLLM engine's memory on each of its GPUs, inside its `gpu_memory_utilization` share, and
    the KV cache left there (tensor parallelism splits weights, activations and KV heads evenly)."""
    engine, b = config.rollout.engine, dtype_bytes(config.rollout.engine.dtype)
    tp = engine.tensor_parallel_size
    batched = max(engine.max_model_len, 8192)  # vLLM's profiling batch of tokens
    profile = batched * (4 * shape.hidden + 3 * shape.intermediate) * b + 256 * shape.vocab * 4
    needs = [
        Need("weights", shape.params * b / tp),
        Need("profiling peak (activations, sampler)", profile / tp),
    ]
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
    tp = engine.tensor_parallel_size
    over = f"{tp} GPUs; per GPU" if on_gpu else f"{tp} worker processes"
    kind = "rollout worker" if tp == 1 else f"rollout worker (one engine over {over})"
    plan = ActorPlan(
        kind, config.rollout.num_workers, needs + [Need("KV cache", max(kv, 0))], capacity, [], []
    )
    tokens = max(kv, 0) * tp / per_token
    plan.notes.append(
        f"KV cache holds {tokens:.0f} tokens: {tokens * config.sampling.n / group_tokens:.0f} completions "
        f"of prompt + sampling.max_tokens at once ({config.sampling.n} per question)"
    )
    short = kv * tp < group_tokens * per_token
    wanted = _fewest_gpus(config, shape, gpu, group_tokens * per_token) if on_gpu and short else tp
    spread = (
        f"set rollout.engine.tensor_parallel_size and rollout.gpus_per_worker to {wanted} (the fewest GPUs "
        "that fit)"
        if wanted
        else "a larger GPU (no tensor-parallel size up to 8 fits)"
    )
    if on_gpu and kv <= 0:
        weights = shape.params * dtype_bytes(engine.dtype)
        plan.problems.append(
            f"{'one GPU' if tp == 1 else f'{tp} GPUs'} cannot hold this engine: its weights are "
            f"{weights / GIB:.1f} GiB, a GPU's share (rollout.engine.gpu_memory_utilization "
            f"{engine.gpu_memory_utilization}) is {engine.gpu_memory_utilization * gpu / GIB:.1f} GiB: "
            + spread
        )
    elif short:
        setting = "rollout.engine.gpu_memory_utilization" if on_gpu else "rollout.engine.kv_cache_gib"
        plan.problems.append(
            f"the KV cache ({max(kv, 0) * tp / GIB:.2f} GiB) cannot hold one question's {config.sampling.n} "
            f"completions ({group_tokens * per_token / GIB:.2f} GiB): raise {setting} or lower "
            "sampling.max_tokens" + (f", or {spread}" if on_gpu and wanted != tp else "")
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


def _fewest_gpus(config: RunConfig, shape: ModelShape, gpu: float, kv_need: float) -> int:
    """The smallest tensor-parallel size (1, 2, 4, 8) whose GPUs hold the engine and `kv_need`."""
    for tp in (1, 2, 4, 8):
        engine = dataclasses.replace(config.rollout.engine, tensor_parallel_size=tp)
        trial = dataclasses.replace(config, rollout=dataclasses.replace(config.rollout, engine=engine))
        if rollout_needs(trial, shape, gpu)[1] * tp >= kv_need:
            return tp
    return 0
