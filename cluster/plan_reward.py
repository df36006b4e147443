"""The memory plan's reward-model side (`reward.models`): each model's memory on the device it is
given. A model with a whole GPU (`gpus_per_actor: 1`) has one of its own; a share below one sits
beside a rollout engine on that engine's GPU (Ray packs a 0.1 share next to a 0.9 engine bundle),
so it must fit in what the engine's `gpu_memory_utilization` and transfer buffers leave."""

from __future__ import annotations

from cluster.config import RunConfig
from cluster.plan_units import CUDA_CONTEXT, GIB, ActorPlan, Need
from reward_models.spec import RewardModelSpec


def reward_model_plans(config: RunConfig, gpu: float, host: float, rollout: ActorPlan) -> list[ActorPlan]:
    """One plan per `reward.models` entry; `rollout` is the engines' plan (what a share sits beside)."""
    return [_model_plan(config, i, spec, gpu, host, rollout) for i, spec in enumerate(config.reward.models)]


def _model_plan(
    config: RunConfig, i: int, spec: RewardModelSpec, gpu: float, host: float, rollout: ActorPlan
) -> ActorPlan:
    kind = f"reward model {spec.name}"
    weights = Need(f"weights and a batch of {spec.batch_size} (gpu_memory_gib)", spec.gpu_memory_gib * GIB)
    if not spec.gpus_per_actor:
        needs = [Need(weights.item, weights.nbytes, "host")]
        return ActorPlan(kind, spec.num_actors, needs, host, [], ["on the CPU (gpus_per_actor 0)"])
    needs = [weights, Need("CUDA context", CUDA_CONTEXT)]
    plan = ActorPlan(kind, spec.num_actors, needs, gpu, [], [])
    if spec.gpus_per_actor >= 1:
        plan.notes.append("a GPU of its own")
        if plan.total() > gpu:
            plan.problems.append(f"needs {plan.total() / GIB:.1f} GiB, the GPU has {gpu / GIB:.0f} GiB")
        return plan
    share = config.rollout.gpus_per_worker
    if not 0 < share <= 1 - spec.gpus_per_actor:
        plan.problems.append(
            f"reward.models[{i}].gpus_per_actor {spec.gpus_per_actor:g} is a GPU share, meant to sit "
            f"beside a rollout engine, but rollout.gpus_per_worker {share:g} leaves no room for it: "
            f"set rollout.gpus_per_worker <= {1 - spec.gpus_per_actor:g} or gpus_per_actor: 1"
        )
        return plan
    left = gpu - rollout.total()
    plan.capacity = max(left, 0.0)
    plan.notes.append(
        f"beside a rollout engine on its GPU: {left / GIB:.1f} GiB left there by the engine's "
        "gpu_memory_utilization and transfer buffers"
    )
    if plan.total() > left:
        plan.problems.append(
            f"needs {plan.total() / GIB:.1f} GiB beside a rollout engine, which leaves {left / GIB:.1f} GiB: "
            f"lower rollout.engine.gpu_memory_utilization or reward.models[{i}].gpu_memory_gib"
        )
    return plan
