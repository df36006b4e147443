"""Placement: where every actor runs, decided in this one place.

One placement group holds a bundle per learner rank, per rollout worker, per reward actor, per
reward-model actor (`reward.models`, each spec its own size) and, with `serve.enabled`, one for the
live endpoint (the size of a rollout worker's). An
actor that dies is replaced in its own bundle, so a replacement never competes for resources.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import RunConfig
from cluster.network import free_port


@dataclass
class Placement:
    group: PlacementGroup
    learner_bundles: list[int]
    rollout_bundles: list[int]
    reward_bundles: list[int]
    serve_bundles: list[int]
    model_bundles: list[list[int]] = field(default_factory=list)  # per reward.models spec

    def options(self, bundle: int, cpus: float, gpus: float) -> dict:
        """`.options(...)` for an actor pinned to `bundle` (on a GPU: `gpu_runtime_env`)."""
        return {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=bundle
            ),
            **({"runtime_env": gpu_runtime_env()} if gpus else {}),
        }


def gpu_runtime_env() -> dict:
    """GPU actors (learner ranks, rollout engines, the live endpoint) run PyTorch's allocator with
    expandable segments: memory freed between micro-batches of other sizes is reused instead of
    left in fragments (the planner's allocator reserve assumes it). A value the driver's
    environment sets is kept. Ray merges these variables into the job's own."""
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    return {"env_vars": {"PYTORCH_CUDA_ALLOC_CONF": conf}}


NODE_RESOURCE_SHARE = 0.001  # what a bundle asks of its kind's node resource: only where it goes


def _bundle(cpus: float, gpus: float, node_resource: str = "") -> dict[str, float]:
    return {
        "CPU": cpus,
        **({"GPU": gpus} if gpus else {}),
        **({node_resource: NODE_RESOURCE_SHARE} if node_resource else {}),
    }


def required_cpus(config: RunConfig) -> float:
    return (
        config.learner.num_ranks * config.learner.cpus_per_rank
        + config.rollout.num_workers * config.rollout.cpus_per_worker
        + config.reward.num_actors * 0.1
        + (config.rollout.cpus_per_worker if config.serve.enabled else 0)
        + sum(m.num_actors * m.cpus_per_actor for m in config.reward.models)
    )


def make_placement(config: RunConfig, timeout_s: float = 600.0) -> Placement:
    learner, rollout = config.learner, config.rollout
    learner_bundle = _bundle(learner.cpus_per_rank, learner.gpus_per_rank, learner.node_resource)
    rollout_bundle = _bundle(rollout.cpus_per_worker, rollout.gpus_per_worker, rollout.node_resource)
    bundles = [dict(learner_bundle) for _ in range(learner.num_ranks)]
    bundles += [dict(rollout_bundle) for _ in range(rollout.num_workers)]
    bundles += [_bundle(0.1, 0) for _ in range(config.reward.num_actors)]
    n_serve = int(config.serve.enabled)
    bundles += [dict(rollout_bundle) for _ in range(n_serve)]
    model_bundles = []
    for spec in config.reward.models:
        model_bundles.append(list(range(len(bundles), len(bundles) + spec.num_actors)))
        bundles += [_bundle(spec.cpus_per_actor, spec.gpus_per_actor) for _ in range(spec.num_actors)]
    group = placement_group(
        bundles, strategy=config.train.placement_strategy, name=f"audio-grpo-{config.name}"
    )
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        raise TimeoutError(
            f"the cluster cannot place {bundles} ({config.train.placement_strategy}) "
            f"within {timeout_s:.0f} s; available: {ray.available_resources()}"
        )
    n_learn, n_roll = learner.num_ranks, rollout.num_workers
    n_fixed = n_learn + n_roll + config.reward.num_actors
    return Placement(
        group,
        list(range(n_learn)),
        list(range(n_learn, n_learn + n_roll)),
        list(range(n_learn + n_roll, n_fixed)),
        list(range(n_fixed, n_fixed + n_serve)),
        model_bundles,
    )


@ray.remote(num_cpus=0)
def _address_here() -> tuple[str, int]:
    return ray.util.get_node_ip_address(), free_port()


def address_in_bundle(placement: Placement, bundle: int) -> tuple[str, int]:
    """IP and a free port on the node that holds `bundle` (where a rendezvous master will listen)."""
    return ray.get(_address_here.options(**placement.options(bundle, 0, 0)).remote())


def placement_record(placement: Placement) -> dict[str, list[dict]]:
    """Per actor kind, the node of each of its bundles (id, address, custom resources): written to
    the run directory so where everything ran is on record."""
    from ray.util.placement_group import placement_group_table

    bundle_nodes = placement_group_table(placement.group)["bundles_to_node_id"]
    nodes = {n["NodeID"]: n for n in ray.nodes()}
    kinds = {
        "learner": placement.learner_bundles,
        "rollout": placement.rollout_bundles,
        "reward": placement.reward_bundles,
        "serve": placement.serve_bundles,
        "reward_model": [b for bundles in placement.model_bundles for b in bundles],
    }
    record = {}
    for kind, bundles in kinds.items():
        record[kind] = []
        for bundle in bundles:
            node = nodes.get(bundle_nodes.get(bundle), {})
            custom = {
                k: v
                for k, v in node.get("Resources", {}).items()
                if k not in ("CPU", "GPU", "memory", "object_store_memory") and ":" not in k
            }
            record[kind].append(
                {
                    "node_id": node.get("NodeID"),
                    "address": node.get("NodeManagerAddress"),
                    "resources": custom,
                }
            )
    return record
