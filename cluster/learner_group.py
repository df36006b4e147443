"""The learner ranks as one group: DeepSpeed data parallelism over Ray actors, deadlines on every
call, and a rebuild when a rank dies (the ranks share one process group, so all go together)."""

from __future__ import annotations

import time
from typing import Any

import ray

from cluster.actors import LearnerActor
from cluster.config import RunConfig, learner_config
from cluster.placement import Placement, address_in_bundle
from learner.batch import LearnerBatch
from learner.grpo_step import learner_phases


def slowest_phases(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Each phase's seconds (`learner_<phase>_s`) of the rank that took longest in it: the ranks
    meet at every gradient all-reduce, so the slowest one sets the pace."""
    return {key: max(m[key] for m in metrics) for key in learner_phases(metrics[0])}


def _answer(_actor) -> bool:
    return True


def ready(actors: list, timeout_s: float | None = None) -> None:
    """Wait until every actor has started and answers (Ray's documented `__ray_call__`); raises the
    actor's start-up error, or GetTimeoutError."""
    ray.get([a.__ray_call__.remote(_answer) for a in actors], timeout=timeout_s)


class LearnerLost(RuntimeError):
    """A learner rank died: the ranks form one process group, so all are rebuilt together."""


class LearnerGroup:
    """`num_ranks` learner actors forming one DeepSpeed data-parallel group."""

    def __init__(self, config: RunConfig, placement: Placement, model_path: str, wait: bool = True):
        """`wait=False`: the ranks are started but not waited for; call `wait_ready()` before use
        (the driver starts the rollout pool meanwhile: a 7B learner and its engines load together)."""
        self.config, self.placement, self.train, self.model_path = config, placement, config.train, model_path
        self.sync_deadline_s = 4 * config.sync.timeout_s + 60  # init/start/update/finish, each bounded
        self.restarts = 0
        self._start(wait)

    def _start(self, wait: bool = True) -> None:
        cfg, wired = self.config.learner, learner_config(self.config)
        host, port = address_in_bundle(self.placement, self.placement.learner_bundles[0])
        self.ranks = [
            LearnerActor.options(
                **self.placement.options(bundle, cfg.cpus_per_rank, cfg.gpus_per_rank)
            ).remote(
                self.model_path,
                wired,
                rank=rank,
                world_size=cfg.num_ranks,
                master_addr=host,
                master_port=port,
            )
            for rank, bundle in enumerate(self.placement.learner_bundles)
        ]
        # Queued behind each rank's start-up: vLLM's import overlaps the engines' start.
        self._prepared = [rank.prepare_weight_transfer.remote() for rank in self.ranks]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until every rank has loaded the model and joined the group; raises a rank's start-up
        error, or GetTimeoutError after train.learner_timeout_s."""
        ready(self.ranks, timeout_s=self.train.learner_timeout_s)
        ray.get(self._prepared, timeout=self.train.learner_timeout_s)  # done by now: its error, if any

    def restart(self) -> None:
        """New ranks in the same bundles (a fresh process group): after one died, the survivors'
        collectives cannot go on. The caller loads a checkpoint into them."""
        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        self._start()
        self.restarts += 1

    def _gather(self, futures: list, timeout_s: float, what: str, key: str) -> list:
        """Every rank's result within the deadline. The first failure is checked at once (not after
        the ranks still blocked in a collective with it): with a rank dead, `LearnerLost`."""
        deadline, pending = time.monotonic() + timeout_s, list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise TimeoutError(f"{what} did not finish within {timeout_s:.0f}s ({key})")
            try:
                ray.get(done[0])
            except ray.exceptions.RayError as err:
                if self._rank_lost():
                    raise LearnerLost(f"{what}: a learner rank died ({type(err).__name__})") from err
                raise
        return ray.get(futures)

    def _rank_lost(self) -> bool:
        try:
            ready(self.ranks, timeout_s=30.0)  # a rank blocked on a dead peer does not answer either
            return False
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return True

    def train_step(self, batch: LearnerBatch) -> dict[str, float]:
        n = len(self.ranks)
        metrics = self._gather(
            [rank.train_step.remote(batch.shard(i, n)) for i, rank in enumerate(self.ranks)],
            self.train.learner_timeout_s,
            "the learner step",
            "train.learner_timeout_s",
        )
        merged = {**metrics[0], **slowest_phases(metrics)}
        for key in ("loss", "kl", "clip_ratio"):
            merged[key] = sum(m[key] for m in metrics) / n
        merged["responses"] = sum(m["responses"] for m in metrics)
        return merged

    def sft_step(self, batch: LearnerBatch) -> dict[str, float]:
        """One supervised update over the ranks (each its share of the questions)."""
        n = len(self.ranks)
        futures = [rank.sft_step.remote(batch.shard(i, n)) for i, rank in enumerate(self.ranks)]
        metrics = self._gather(
            futures, self.train.learner_timeout_s, "the SFT step", "train.learner_timeout_s"
        )
        return {
            **metrics[0],
            **slowest_phases(metrics),
            "loss": sum(m["loss"] for m in metrics) / n,
            "tokens": sum(m["tokens"] for m in metrics),
        }

    def init_weight_transfer(self, backend: str, init: dict, client, wire_dtype: str) -> None:
        """Every rank builds its trainer engine; rank 0 meets the receivers (through `client`)."""
        self._gather(
            [r.init_weight_transfer.remote(backend, init, client, wire_dtype) for r in self.ranks],
            self.sync_deadline_s,
            "joining the weight-transfer group",
            "4 x sync.timeout_s + 60",
        )

    def send_weights(self, version: int) -> dict[str, Any]:
        """Rank 0's outcome of one weight update (every rank takes part: ZeRO-3 gathers)."""
        outcomes = self._gather(
            [r.send_weights.remote(version) for r in self.ranks],
            self.sync_deadline_s,
            f"the weight update to version {version} (learner side)",
            "4 x sync.timeout_s + 60",
        )
        return outcomes[0]

    def save(self, directory: str, state: dict[str, Any]) -> None:
        futures = [rank.save.remote(directory, state) for rank in self.ranks]
        self._gather(futures, self.train.learner_timeout_s, "saving a checkpoint", "train.learner_timeout_s")

    def load(self, directory: str) -> dict[str, Any]:
        futures = [rank.load.remote(directory) for rank in self.ranks]
        what = "loading a checkpoint"
        return self._gather(futures, self.train.learner_timeout_s, what, "train.learner_timeout_s")[0]
