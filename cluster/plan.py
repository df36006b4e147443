"""The memory plan: what each actor kind will need, against what the hardware has, before anything
starts (`audio-grpo plan`; `train` runs the same check and refuses a config that cannot fit). The
learner's side is `plan_learner.py`, the rollout engines' `plan_rollout.py`, the model's shape and
the units `plan_units.py`; this module weighs them against the hardware.

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

import os
from dataclasses import dataclass, field

from cluster.config import ConfigError, RunConfig
from cluster.plan_learner import learner_plan, resolve_auto
from cluster.plan_reward import reward_model_plans
from cluster.plan_rollout import rollout_plan
from cluster.plan_units import GIB, PROCESS_HOST, ActorPlan, ModelShape, dtype_bytes, model_shape


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


@dataclass
class Plan:
    hardware: Hardware
    on_gpu: bool
    actors: list[ActorPlan]
    problems: list[str]
    host_need: float  # bytes on the fullest node
    config: RunConfig  # the run's config with every `auto` the plan decides resolved
    choices: list[str] = field(default_factory=list)  # what `auto` became, and what limited it

    @property
    def fits(self) -> bool:
        return not self.problems and not any(a.problems for a in self.actors)

    def render(self) -> str:
        hw = self.hardware
        where = f"{hw.gpus_per_node} x {hw.gpu_gib:.0f} GiB GPUs" if self.on_gpu else "no GPUs"
        lines = [f"hardware: {hw.nodes} node(s), {where}, {hw.host_gib:.0f} GiB host memory each"]
        if self.choices:
            lines += ["", *self.choices]
        for actor in self.actors:
            device = "GPU" if self.on_gpu and actor.total() else "host"
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
    learner_capacity = gpu if on_gpu else hardware.host_gib * GIB
    config, choices = resolve_auto(config, shape, learner_capacity)
    learner = learner_plan(config, shape, learner_capacity)
    rollout = rollout_plan(config, shape, gpu, on_gpu, hardware.host_gib * GIB)
    actors = [learner, rollout]
    if config.serve.enabled:
        actors.append(ActorPlan("live endpoint", 1, rollout.needs, rollout.capacity, rollout.problems, []))
    actors += reward_model_plans(config, gpu, hardware.host_gib * GIB, rollout)
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
    return Plan(hardware, on_gpu, actors, problems, host_need, config, choices)


def _gpu_count_problems(config: RunConfig, hardware: Hardware) -> list[str]:
    wanted = (
        config.learner.num_ranks * config.learner.gpus_per_rank
        + (config.rollout.num_workers + int(config.serve.enabled)) * config.rollout.gpus_per_worker
        + sum(m.num_actors * m.gpus_per_actor for m in config.reward.models)
    )
    have = hardware.nodes * hardware.gpus_per_node
    if wanted <= have:
        return []
    return [
        f"the actors ask for {wanted:g} GPUs, the hardware has {have}: lower learner.num_ranks, "
        "rollout.num_workers or reward.models' gpus_per_actor, or add nodes (hardware.nodes)"
    ]


def _host_need(
    config: RunConfig, shape: ModelShape, hardware: Hardware, actors: list[ActorPlan], on_gpu: bool
) -> float:
    """Host memory on the fullest node: learner ranks load together (ZeRO-3: partitions only), each
    process carries its libraries, an offloaded reference lives there, and on CPU everything does."""
    learner = config.learner
    if not on_gpu:
        return sum(a.count * (a.total() + a.total("host") + PROCESS_HOST) for a in actors)
    per_node = max(1, int(hardware.gpus_per_node // max(learner.gpus_per_rank, 1)))
    ranks_here = min(learner.num_ranks, per_node)
    b = dtype_bytes(learner.parallel.dtype)
    whole = shape.params * b / (learner.num_ranks if learner.parallel.zero_stage == 3 else 1)
    loading = (whole + shape.largest_layer * b) * (2 if learner.loss.beta else 1)
    per_engine = max(1, config.rollout.engine.tensor_parallel_size)  # each TP worker is a process
    engines_here = max(
        0, min(config.rollout.num_workers, (hardware.gpus_per_node - ranks_here) // per_engine)
    )
    models = [a for a in actors if a.kind.startswith("reward model")]
    models_here = sum(a.count * (PROCESS_HOST + a.total("host")) for a in models)
    return (
        ranks_here * (PROCESS_HOST + loading + actors[0].total("host"))
        + engines_here * per_engine * PROCESS_HOST
        + models_here
    )


def check_fits(config: RunConfig) -> Plan:
    """`train`'s check before any actor starts: the plan, or a ConfigError that names what to change."""
    plan = make_plan(config, detect_hardware(config))
    if config.hardware.check and not plan.fits:
        raise ConfigError(
            "this config does not fit its hardware (hardware.check: false skips this check)\n" + plan.render()
        )
    return plan
