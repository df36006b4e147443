"""The memory plan's learner side: one rank's weights, gradients and optimizer state per ZeRO stage,
the reference, ZeRO-3's gathered layers, the activations of a micro-batch with or without gradient
checkpointing, logits, the weight sender's buffers."""

from __future__ import annotations

from cluster.config import RunConfig
from cluster.plan_units import CUDA_CONTEXT, GIB, PROMPT_TEXT_TOKENS, ActorPlan, ModelShape, Need, dtype_bytes


def _layer_activations(tokens: float, hidden: int, intermediate: int, dtype_bytes: int) -> float:
    """Tensors one transformer layer keeps for backward per token (norms, q/k/v, attention output,
    residuals, the MLP's gate, up, activation and product; flash/SDPA attention keeps no scores)."""
    return tokens * (8 * hidden + 4 * intermediate) * dtype_bytes


def learner_needs(config: RunConfig, shape: ModelShape) -> list[Need]:
    """One learner rank's memory (rank 0, which also sends the weights)."""
    learner, parallel = config.learner, config.learner.parallel
    n, stage, b, p = learner.num_ranks, parallel.zero_stage, dtype_bytes(parallel.dtype), shape.params
    per = {True: n, False: 1}
    # Mixed precision Adam: fp32 master, two moments and DeepSpeed's fp32 gradient partition;
    # in float32 the weights are the master copy.
    optimizer_bytes = 16 if b == 2 else 8
    # LoRA: adapters only; else all but the modules the family never runs.
    trainable = lora_params(config, shape) if learner.lora.rank else p - shape.frozen
    needs = [
        Need("weights", p * b / per[stage == 3]),
        Need(f"gradients ({trainable / 1e6:.0f} M trainable params)", trainable * b / per[stage >= 2]),
        Need(
            f"optimizer state (Adam, {optimizer_bytes} B/param)",
            trainable * optimizer_bytes / per[stage >= 1],
        ),
    ]
    if config.learner.loss.beta != 0.0 and not learner.lora.rank:  # LoRA: the base, adapters off
        where = "host" if parallel.reference_offload else "gpu"
        needs.append(Need("reference model", p * b / per[stage == 3], where))
    if stage == 3:
        needs.append(Need("ZeRO-3 gathered layers (current + prefetched)", 2 * shape.largest_layer * b))
    needs += activation_needs(config, shape, b)
    sender = 3 * config.sync.bucket_mb * 2**20  # one gathered group + two send buffers
    needs.append(Need("weight transfer (rank 0)", sender))
    if learner.gpus_per_rank > 0:
        needs.append(Need("CUDA context, NCCL, allocator slack", CUDA_CONTEXT))
    return needs


def lora_params(config: RunConfig, shape: ModelShape) -> int:
    """Adapter parameters: rank x (fan-in + fan-out) of each targeted language-model projection."""
    lora = config.learner.lora
    h, kv, inter = shape.hidden, shape.kv_width, shape.intermediate
    sides = {
        "q_proj": 2 * h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": 2 * h,
        "gate_proj": h + inter, "up_proj": h + inter, "down_proj": inter + h,
    }  # fmt: skip
    per_layer = sum(sides.get(m.strip(), 0) for m in lora.target_modules.split(","))
    audio = 6 * shape.audio_hidden + 2 * (shape.audio_hidden + shape.audio_intermediate) if lora.audio else 0
    return lora.rank * (shape.layers * per_layer + shape.audio_layers * audio)


def activation_needs(config: RunConfig, shape: ModelShape, b: int) -> list[Need]:
    parallel = config.learner.parallel
    questions, group = parallel.micro_batch_questions, config.sampling.n
    prompt, completion = shape.audio_tokens + PROMPT_TEXT_TOKENS, config.sampling.max_tokens
    rows = questions * group
    checkpointing = parallel.gradient_checkpointing
    shared = parallel.share_prompt and not checkpointing  # prompt sharing is off under checkpointing
    tokens = questions * prompt + rows * completion if shared else rows * (prompt + completion)
    per_layer = _layer_activations(tokens, shape.hidden, shape.intermediate, b)
    if checkpointing:  # each layer's input kept, one layer's activations live during recompute
        text = tokens * shape.hidden * b * shape.layers + per_layer
    else:
        text = per_layer * shape.layers
    needs = [
        Need(f"activations ({tokens:.0f} tokens, checkpointing {'on' if checkpointing else 'off'})", text)
    ]
    if shared:  # the prompt's keys/values, selected once per completion row
        needs.append(Need("prompt KV per completion", rows * prompt * 2 * shape.kv_width * b * shape.layers))
    audio_layer = _layer_activations(
        questions * shape.audio_positions, shape.audio_hidden, shape.audio_intermediate, b
    )
    audio = audio_layer * (1 if checkpointing else shape.audio_layers)
    needs.append(Need("audio encoder activations", audio))
    # Logits and their gradient in the training dtype; float32 log-softmax one row at a time.
    logits = rows * completion * shape.vocab * b * 2 + completion * shape.vocab * 4 * 2
    needs.append(Need("logits (+ gradient, one row's float32 log-softmax)", logits))
    return needs


def learner_plan(config: RunConfig, shape: ModelShape, capacity: float) -> ActorPlan:
    needs, parallel = learner_needs(config, shape), config.learner.parallel
    plan = ActorPlan("learner rank", config.learner.num_ranks, needs, capacity, [], [])
    if plan.total() <= capacity:
        return plan
    advice = []
    if parallel.zero_stage < 3:
        advice.append("learner.parallel.zero_stage: 3 (shards weights, gradients and optimizer state)")
    if not parallel.gradient_checkpointing:
        advice.append("learner.parallel.gradient_checkpointing: true")
    if parallel.micro_batch_questions > 1:
        advice.append("a smaller learner.parallel.micro_batch_questions")
    if config.learner.loss.beta and not parallel.reference_offload and parallel.zero_stage == 3:
        advice.append("learner.parallel.reference_offload: true")
    advice.append("more learner.num_ranks" if parallel.zero_stage >= 1 else "a smaller sampling.max_tokens")
    plan.problems.append(
        f"needs {plan.total() / GIB:.1f} GiB, has {capacity / GIB:.1f} GiB; change " + " or ".join(advice)
    )
    return plan
