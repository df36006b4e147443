"""The memory plan's learner side: one rank's weights, gradients and optimizer state per ZeRO stage,
the reference, ZeRO-3's gathered layers, the activations of a micro-batch with or without gradient
checkpointing, logits, the weight sender's buffers and the allocator's reserve; and the choices
`auto` leaves to the plan: questions per micro-batch (`micro_batch_questions`) and per no-grad
pass (`no_grad_questions`), the most that fit."""

from __future__ import annotations

import dataclasses
import math

from cluster.config import RunConfig
from cluster.plan_units import (
    ALLOCATOR_RESERVE,
    CUDA_CONTEXT,
    GIB,
    PROMPT_TEXT_TOKENS,
    ActorPlan,
    ModelShape,
    Need,
    dtype_bytes,
    transfer_chunk,
)


def _layer_activations(tokens: float, hidden: int, intermediate: int, dtype_bytes: int) -> float:
    """Tensors one transformer layer keeps for backward per token (norms, q/k/v, attention output,
    residuals, the MLP's gate, up, activation and product; SDPA keeps no scores): 8 hidden-wide and
    4 intermediate-wide by that count, which measured 12-17% short of the peaks on the H200
    (README, Measured on GPU); 11 hidden-wide matches them (the attention kernel's outputs and
    statistics, casts)."""
    return tokens * (11 * hidden + 4 * intermediate) * dtype_bytes


def learner_needs(config: RunConfig, shape: ModelShape) -> list[Need]:
    """One learner rank's memory (rank 0, which also sends the weights), at the micro-batch size
    the config names (`auto` resolved by `resolve_auto` first, else as 1)."""
    parallel, b = config.learner.parallel, dtype_bytes(config.learner.parallel.dtype)
    questions = parallel.micro_batch_questions if isinstance(parallel.micro_batch_questions, int) else 1
    return _with_reserve(config, state_needs(config, shape) + activation_needs(config, shape, b, questions))


def state_needs(config: RunConfig, shape: ModelShape) -> list[Need]:
    """What a rank holds for the whole run: weights, gradients, optimizer state, the reference,
    ZeRO-3's gathered layers, the weight sender's buffers, the CUDA context."""
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
    chunk, _ = transfer_chunk(config, shape)
    needs.append(Need("weight transfer (rank 0: one gathered group + two send buffers)", 3 * chunk))
    if learner.gpus_per_rank > 0:
        needs.append(Need("CUDA context, NCCL", CUDA_CONTEXT))
    return needs


def _with_reserve(config: RunConfig, needs: list[Need]) -> list[Need]:
    """On a GPU, the caching allocator's slack on top (`ALLOCATOR_RESERVE` of the GPU items)."""
    if config.learner.gpus_per_rank <= 0:
        return needs
    on_gpu = sum(n.nbytes for n in needs if n.where == "gpu")
    reserve = Need(
        f"allocator reserve ({ALLOCATOR_RESERVE:.0%}, expandable segments)", ALLOCATOR_RESERVE * on_gpu
    )
    return [*needs, reserve]


def lora_params(config: RunConfig, shape: ModelShape) -> int:
    """Adapter parameters: rank x (fan-in + fan-out) of each targeted language-model projection."""
    lora = config.learner.lora
    h, kv, inter = shape.hidden, shape.kv_width, shape.intermediate
    sides = {
        "q_proj": 2 * h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": 2 * h,
        "gate_proj": h + inter, "up_proj": h + inter, "down_proj": inter + h,
    }  # fmt: skip
    if shape.experts:  # experts are parameters, not Linear modules: LoRA finds attention only
        sides = {k: v for k, v in sides.items() if k not in ("gate_proj", "up_proj", "down_proj")}
    per_layer = sum(sides.get(m.strip(), 0) for m in lora.target_modules.split(","))
    audio = 6 * shape.audio_hidden + 2 * (shape.audio_hidden + shape.audio_intermediate) if lora.audio else 0
    return lora.rank * (shape.layers * per_layer + shape.audio_layers * audio)


def _lengths(config: RunConfig, shape: ModelShape) -> tuple[int, int, int]:
    """(prompt tokens of a 30 s clip, completion tokens, completions per question)."""
    return shape.audio_tokens + PROMPT_TEXT_TOKENS, config.sampling.max_tokens, config.sampling.n


def activation_needs(config: RunConfig, shape: ModelShape, b: int, questions: int) -> list[Need]:
    """What one micro-batch of `questions` keeps for its backward pass. With prompt sharing the
    decoder runs each prompt once (with checkpointing in packed rows under a block mask; without,
    on a cache whose rows are picked per completion)."""
    parallel = config.learner.parallel
    prompt, completion, group = _lengths(config, shape)
    rows, checkpointing, shared = questions * group, parallel.gradient_checkpointing, parallel.share_prompt
    tokens = questions * prompt + rows * completion if shared else rows * (prompt + completion)
    per_layer = _layer_activations(tokens, shape.hidden, shape.intermediate, b)
    if checkpointing:  # each layer's input kept, one layer's activations live during recompute
        text = tokens * shape.hidden * b * shape.layers + per_layer
    else:
        text = per_layer * shape.layers
    needs = [
        Need(f"activations ({tokens:.0f} tokens, checkpointing {'on' if checkpointing else 'off'})", text)
    ]
    if shared and checkpointing:  # one bool per (query, key) of each packed row
        needs.append(Need("packed rows' attention mask", questions * (prompt + group * completion) ** 2))
    elif shared:  # the prompt's keys/values, selected once per completion row
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


def no_grad_needs(config: RunConfig, shape: ModelShape, b: int, questions: int) -> list[Need]:
    """One no-grad pass (the reference's, the old policy's) over `questions`, the way the policy
    runs (packed rows with checkpointing, else a cache): nothing kept for a backward, so one
    layer's tensors at a time, the mask or the cache, and the logits."""
    prompt, completion, group = _lengths(config, shape)
    rows, packed = questions * group, config.learner.parallel.gradient_checkpointing
    tokens = questions * prompt + rows * completion
    layer = _layer_activations(tokens, shape.hidden, shape.intermediate, b)
    audio_positions = questions * shape.audio_positions
    audio = _layer_activations(audio_positions, shape.audio_hidden, shape.audio_intermediate, b)
    logits = rows * completion * shape.vocab * b + completion * shape.vocab * 4
    if packed:
        held = Need("no-grad pass: packed rows' mask", questions * (prompt + group * completion) ** 2)
    else:
        kv = rows * prompt * 2 * shape.kv_width * b * shape.layers
        held = Need("no-grad pass: prompt KV per completion", kv)
    return [Need("no-grad pass: a layer's tensors", layer + audio), held, Need("no-grad: logits", logits)]


def questions_per_rank(config: RunConfig) -> int:
    return max(1, config.train.questions_per_step // config.learner.num_ranks)


def _largest_fitting(limit: int, need, capacity: float) -> int:
    """The largest n in 1..limit with need(n) <= capacity (0 if none); need grows with n."""
    best = 0
    for n in range(1, limit + 1):
        if need(n) > capacity:
            break
        best = n
    return best


def resolve_auto(config: RunConfig, shape: ModelShape, capacity: float) -> tuple[RunConfig, list[str]]:
    """`micro_batch_questions` and `no_grad_questions` as numbers where they are `auto`, with a
    line for each choice and what limited it. On CPU `auto` keeps the defaults (1; no-grad passes
    the size of the micro-batches)."""
    parallel, b = config.learner.parallel, dtype_bytes(config.learner.parallel.dtype)
    per_rank, on_gpu = questions_per_rank(config), config.learner.gpus_per_rank > 0
    state = sum(n.nbytes for n in _with_reserve(config, state_needs(config, shape)) if n.where == "gpu")
    scale = 1 + ALLOCATOR_RESERVE if on_gpu else 1.0
    lines, micro = [], parallel.micro_batch_questions
    per_step = f"train.questions_per_step / learner.num_ranks = {per_rank} per rank"
    if micro == "auto":

        def step_need(n: int) -> float:
            return state + scale * sum(x.nbytes for x in activation_needs(config, shape, b, n))

        largest = _largest_fitting(per_rank, step_need, capacity) if on_gpu else 1
        passes = math.ceil(per_rank / max(largest, 1))
        micro = max(1, math.ceil(per_rank / passes))  # the fewest passes, evenly filled
        if not on_gpu:
            why = "no GPU (on CPU auto keeps the default, 1)"
        elif largest == 0:
            why = "GPU memory: even 1 question does not fit (see the learner rank's needs)"
        elif largest >= per_rank:
            why = f"the questions a rank has ({per_step})"
        else:
            why = (
                f"GPU memory: {largest + 1} questions would need {step_need(largest + 1) / GIB:.1f} GiB of "
                f"{capacity / GIB:.0f}; {per_step}, {passes} passes"
            )
        lines += [f"learner.parallel.micro_batch_questions: {micro} (auto)", f"  limited by: {why}"]
    no_grad = parallel.no_grad_questions
    if no_grad == "auto":

        def pass_need(n: int) -> float:
            return state + scale * sum(x.nbytes for x in no_grad_needs(config, shape, b, n))

        largest = _largest_fitting(per_rank, pass_need, capacity) if on_gpu else micro
        no_grad = max(micro, largest // micro * micro)  # whole micro-batches per pass
        if not on_gpu:
            why = "no GPU (on CPU auto keeps one micro-batch per pass)"
        elif largest >= per_rank:
            why = f"the questions a rank has, in one pass ({per_step})"
        else:
            why = f"GPU memory: {largest + 1} questions would need {pass_need(largest + 1) / GIB:.1f} GiB"
        lines += [f"learner.parallel.no_grad_questions: {no_grad} (auto)", f"  limited by: {why}"]
    resolved = dataclasses.replace(parallel, micro_batch_questions=micro, no_grad_questions=no_grad)
    learner = dataclasses.replace(config.learner, parallel=resolved)
    return dataclasses.replace(config, learner=learner), lines


def learner_plan(config: RunConfig, shape: ModelShape, capacity: float) -> ActorPlan:
    needs, parallel = learner_needs(config, shape), config.learner.parallel
    plan = ActorPlan("learner rank", config.learner.num_ranks, needs, capacity, [], [])
    if shape.experts:
        gathered = f"; ZeRO-3 gathers a layer with all its experts ({shape.largest_layer / 1e9:.2f} B)"
        plan.notes.append(
            f"mixture of experts: {shape.params / 1e9:.1f} B parameters, {shape.active / 1e9:.1f} B active "
            f"per token ({shape.experts_per_token} of {shape.experts} experts); memory holds them all"
            + (gathered if parallel.zero_stage == 3 else "")
        )
    no_grad = parallel.no_grad_questions
    if isinstance(no_grad, int):  # the no-grad passes come before the micro-batches' activations
        passes = no_grad_needs(config, shape, dtype_bytes(parallel.dtype), no_grad)
        peak = sum(
            n.nbytes for n in _with_reserve(config, state_needs(config, shape) + passes) if n.where == "gpu"
        )
        plan.notes.append(f"no-grad passes of {no_grad} questions peak at {peak / GIB:.2f} GiB")
        if peak > capacity:
            plan.problems.append(
                f"learner.parallel.no_grad_questions {no_grad} needs {peak / GIB:.1f} GiB, has "
                f"{capacity / GIB:.1f} GiB: lower it (or auto)"
            )
    if plan.total() <= capacity:
        return plan
    advice = []
    if parallel.zero_stage < 3:
        advice.append("learner.parallel.zero_stage: 3 (shards weights, gradients and optimizer state)")
    if not parallel.gradient_checkpointing:
        advice.append("learner.parallel.gradient_checkpointing: true")
    if isinstance(parallel.micro_batch_questions, int) and parallel.micro_batch_questions > 1:
        advice.append("a smaller learner.parallel.micro_batch_questions (or auto)")
    if config.learner.loss.beta and not parallel.reference_offload and parallel.zero_stage == 3:
        advice.append("learner.parallel.reference_offload: true")
    advice.append("more learner.num_ranks" if parallel.zero_stage >= 1 else "a smaller sampling.max_tokens")
    plan.problems.append(
        f"needs {plan.total() / GIB:.1f} GiB, has {capacity / GIB:.1f} GiB; change " + " or ".join(advice)
    )
    return plan
