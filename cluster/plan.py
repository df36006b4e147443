"""The memory plan: what each actor kind will need, against what the hardware has, before anything
starts (`audio-grpo plan`; `train` runs the same check and refuses a config that cannot fit).

Estimates, per actor, from the model's shape (its config.json, or a bundled copy for hub names
not on disk) and the run's settings:
- learner rank: weights, gradients and optimizer state per ZeRO stage and rank count (the ZeRO
  paper's accounting: bf16 weights and gradients, fp32 master + Adam moments + DeepSpeed's fp32
  gradient partition), the frozen reference (sharded under ZeRO-3, or in host memory), ZeRO-3's
  gathered layers, activations of one micro-batch with or without gradient checkpointing for the
  configured prompt and completion lengths, logits, the weight sender's buffers;
- rollout worker / live endpoint: vLLM's share (`gpu_memory_utilization`), inside it weights, the
  profiling peak and the KV cache that is left (at least one group of completions must fit),
  outside it the transfer buffers and the CUDA context;
- host memory per node while loading (every rank on a node loads at once).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cluster.config import ConfigError, RunConfig, expand_path

GIB = 2**30
MODEL_CONFIGS = Path(__file__).parent / "model_configs"
CUDA_CONTEXT = 1.0 * GIB  # CUDA context, NCCL and allocator slack per GPU process
PROMPT_TEXT_TOKENS = 160  # chat template, question and up to 8 choices
PROCESS_HOST = 2.0 * GIB  # a Python process with torch, transformers and vLLM imported


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of a model: parameter counts and the widths that size activations."""

    params: int
    largest_layer: int  # parameters of the biggest decoder layer or single tensor (ZeRO-3 gathers it)
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    kv_width: int  # key/value heads x head size
    audio_hidden: int
    audio_intermediate: int
    audio_layers: int
    audio_positions: int  # encoder positions of a 30 s clip
    audio_tokens: int  # prompt tokens of a 30 s clip
    frozen: int = 0  # parameters of modules the family never runs (a vision tower): not trained


def _hf_config(model_path: str):
    from transformers import AutoConfig

    path = expand_path(model_path)
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(path)
    bundled = MODEL_CONFIGS / f"{Path(model_path).name}.json"
    if bundled.is_file():
        values = {k: v for k, v in json.loads(bundled.read_text()).items() if not k.startswith("_")}
        return AutoConfig.for_model(**values)
    known = ", ".join(sorted(p.stem for p in MODEL_CONFIGS.glob("*.json")))
    raise ConfigError(f"model.path {model_path}: no config.json there, and no bundled shape ({known})")


def model_shape(model_path: str) -> ModelShape:
    """The shape of the model at `model_path` (built on the meta device: no weights are read)."""
    import torch

    from families import adapter_for

    checkpoint_config = _hf_config(model_path)
    adapter = adapter_for(checkpoint_config)
    config = adapter.trained_config(checkpoint_config)
    with torch.device("meta"):
        model = adapter.model_class()(config)
    text, audio = config.text_config, config.audio_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    layer = sum(p.numel() for p in adapter.decoder(model).layers[0].parameters())
    largest = max(p.numel() for p in model.parameters())
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        largest_layer=max(layer, largest),
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        kv_width=text.num_key_value_heads * head_dim,
        audio_hidden=audio.d_model,
        audio_intermediate=audio.encoder_ffn_dim,
        audio_layers=audio.encoder_layers,
        audio_positions=audio.max_source_positions,
        audio_tokens=audio.max_source_positions // 2,
        frozen=sum(p.numel() for m in adapter.unused_modules for p in model.get_submodule(m).parameters()),
    )


@dataclass(frozen=True)
class Hardware:
    nodes: int
    gpus_per_node: int
    gpu_gib: float
    host_gib: float


def detect_hardware(config: RunConfig) -> Hardware:
    """The configured hardware, 0s filled from this machine (host memory; GPU 0's memory)."""
    hw = config.hardware
    host = hw.host_gib or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    gpu_gib, gpus = hw.gpu_gib, hw.gpus_per_node
    if not gpu_gib or not gpus:
        import torch

        if torch.cuda.is_available():
            gpu_gib = gpu_gib or torch.cuda.get_device_properties(0).total_memory / GIB
            gpus = gpus or torch.cuda.device_count()
    return Hardware(hw.nodes, gpus, gpu_gib, host)


@dataclass(frozen=True)
class Need:
    item: str
    nbytes: float
    where: str = "gpu"  # or "host"


def _bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _layer_activations(tokens: float, hidden: int, intermediate: int, dtype_bytes: int) -> float:
    """Tensors one transformer layer keeps for backward per token (norms, q/k/v, attention output,
    residuals, the MLP's gate, up, activation and product; flash/SDPA attention keeps no scores)."""
    return tokens * (8 * hidden + 4 * intermediate) * dtype_bytes


def learner_needs(config: RunConfig, shape: ModelShape) -> list[Need]:
    """One learner rank's memory (rank 0, which also sends the weights)."""
    learner, parallel = config.learner, config.learner.parallel
    n, stage, b, p = learner.num_ranks, parallel.zero_stage, _bytes(parallel.dtype), shape.params
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
    needs += _activation_needs(config, shape, b)
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


def _activation_needs(config: RunConfig, shape: ModelShape, b: int) -> list[Need]:
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


def rollout_needs(config: RunConfig, shape: ModelShape, gpu_bytes: float) -> tuple[list[Need], float]:
    """One vLLM engine's memory inside its `gpu_memory_utilization` share, and the KV cache left."""
    engine, b = config.rollout.engine, _bytes(config.rollout.engine.dtype)
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
    return 2 * shape.layers * shape.kv_width * _bytes(config.rollout.engine.dtype)


@dataclass
class ActorPlan:
    kind: str
    count: int
    needs: list[Need]
    capacity: float  # bytes of the device it lives on (GPU, or host on CPU runs)
    problems: list[str]
    notes: list[str]

    def total(self, where: str = "gpu") -> float:
        return sum(n.nbytes for n in self.needs if n.where == where)


@dataclass
class Plan:
    hardware: Hardware
    on_gpu: bool
    actors: list[ActorPlan]
    problems: list[str]
    host_need: float  # bytes on the fullest node

    @property
    def fits(self) -> bool:
        return not self.problems and not any(a.problems for a in self.actors)

    def render(self) -> str:
        hw = self.hardware
        where = f"{hw.gpus_per_node} x {hw.gpu_gib:.0f} GiB GPUs" if self.on_gpu else "no GPUs"
        lines = [f"hardware: {hw.nodes} node(s), {where}, {hw.host_gib:.0f} GiB host memory each"]
        for actor in self.actors:
            device = "GPU" if self.on_gpu else "host"
            lines.append(
                f"\n{actor.kind} (x{actor.count}): {actor.total() / GIB:.2f} GiB of "
                f"{actor.capacity / GIB:.0f} GiB {device}"
            )
            lines += [
                f"  {n.nbytes / GIB:8.2f} GiB  {n.item}{' (host)' if n.where == 'host' else ''}"
                for n in actor.needs
            ]
            lines += [f"  note: {note}" for note in actor.notes]
            lines += [f"  DOES NOT FIT: {problem}" for problem in actor.problems]
        lines.append(
            f"\nhost memory on the fullest node: {self.host_need / GIB:.1f} GiB of {hw.host_gib:.0f} GiB "
            "(while loading; Ray's object store comes on top)"
        )
        lines += [f"\nDOES NOT FIT: {problem}" for problem in self.problems]
        lines.append(
            "\nverdict: " + ("fits" if self.fits else "does not fit (see above for the setting to change)")
        )
        return "\n".join(lines)


def make_plan(config: RunConfig, hardware: Hardware, shape: ModelShape | None = None) -> Plan:
    """Every actor kind's needs against the hardware, with the settings to change where they do not fit."""
    shape = shape or model_shape(config.model.path)
    on_gpu = config.learner.gpus_per_rank > 0 or config.rollout.gpus_per_worker > 0
    gpu = hardware.gpu_gib * GIB
    learner = _learner_plan(config, shape, gpu if on_gpu else hardware.host_gib * GIB)
    rollout = _rollout_plan(config, shape, gpu, on_gpu, hardware.host_gib * GIB)
    actors = [learner, rollout]
    if config.serve.enabled:
        actors.append(ActorPlan("live endpoint", 1, rollout.needs, rollout.capacity, rollout.problems, []))
    problems = _gpu_count_problems(config, hardware) if on_gpu else []
    host_need = _host_need(config, shape, hardware, actors, on_gpu)
    if host_need > hardware.host_gib * GIB:
        fix = (
            "fewer learner ranks per node (more nodes)"
            if config.learner.parallel.zero_stage == 3
            else "learner.parallel.zero_stage: 3 (each rank loads only its partition)"
        )
        need, have = host_need / GIB, hardware.host_gib
        problems.append(f"host memory: the fullest node needs {need:.1f} GiB, has {have:.1f} GiB: {fix}")
    return Plan(hardware, on_gpu, actors, problems, host_need)


def _learner_plan(config: RunConfig, shape: ModelShape, capacity: float) -> ActorPlan:
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


def _rollout_plan(config: RunConfig, shape: ModelShape, gpu: float, on_gpu: bool, host: float) -> ActorPlan:
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
    if kv < group_tokens * per_token:
        setting = "rollout.engine.gpu_memory_utilization" if on_gpu else "rollout.engine.kv_cache_gib"
        plan.problems.append(
            f"the KV cache ({max(kv, 0) / GIB:.2f} GiB) cannot hold one question's {config.sampling.n} "
            f"completions ({group_tokens * per_token / GIB:.2f} GiB): raise {setting} or lower "
            "sampling.max_tokens"
        )
    if on_gpu:
        outside = CUDA_CONTEXT + 2 * config.sync.bucket_mb * 2**20  # NCCL receive buffers
        plan.needs.append(Need("outside vLLM's share: CUDA context + transfer buffers", outside))
        if engine.gpu_memory_utilization * gpu + outside > gpu:
            plan.problems.append(
                f"rollout.engine.gpu_memory_utilization {engine.gpu_memory_utilization} leaves "
                f"{(1 - engine.gpu_memory_utilization) * gpu / GIB:.1f} GiB, the transfer buffers and CUDA "
                f"context need {outside / GIB:.1f} GiB: lower it or sync.bucket_mb"
            )
    return plan


def _gpu_count_problems(config: RunConfig, hardware: Hardware) -> list[str]:
    wanted = (
        config.learner.num_ranks * config.learner.gpus_per_rank
        + (config.rollout.num_workers + int(config.serve.enabled)) * config.rollout.gpus_per_worker
    )
    have = hardware.nodes * hardware.gpus_per_node
    if wanted <= have:
        return []
    return [
        f"the actors ask for {wanted:g} GPUs, the hardware has {have}: lower learner.num_ranks or "
        "rollout.num_workers, or add nodes (hardware.nodes)"
    ]


def _host_need(
    config: RunConfig, shape: ModelShape, hardware: Hardware, actors: list[ActorPlan], on_gpu: bool
) -> float:
    """Host memory on the fullest node: learner ranks load together (ZeRO-3: partitions only), each
    process carries its libraries, an offloaded reference lives there, and on CPU everything does."""
    learner = config.learner
    if not on_gpu:
        return sum(a.count * (a.total() + PROCESS_HOST) for a in actors)
    per_node = max(1, int(hardware.gpus_per_node // max(learner.gpus_per_rank, 1)))
    ranks_here = min(learner.num_ranks, per_node)
    b = _bytes(learner.parallel.dtype)
    whole = shape.params * b / (learner.num_ranks if learner.parallel.zero_stage == 3 else 1)
    loading = (whole + shape.largest_layer * b) * (2 if learner.loss.beta else 1)
    engines_here = max(0, min(config.rollout.num_workers, hardware.gpus_per_node - ranks_here))
    return ranks_here * (PROCESS_HOST + loading + actors[0].total("host")) + engines_here * PROCESS_HOST


def check_fits(config: RunConfig) -> Plan:
    """`train`'s check before any actor starts: the plan, or a ConfigError that names what to change."""
    plan = make_plan(config, detect_hardware(config))
    if config.hardware.check and not plan.fits:
        raise ConfigError(
            "this config does not fit its hardware (hardware.check: false skips this check)\n" + plan.render()
        )
    return plan
