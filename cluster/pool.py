"""The rollout pool, the actor group the driver talks to most (the reward actors are in
`reward_pool.py`, the learner ranks in `learner_group.py`).

Each group hides its actors: it spreads work over them, and when one dies it starts a replacement
in the same placement bundle and re-runs exactly the work the dead one had (results are taken
only from calls that returned, so no sample is counted twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from cluster.actors import RolloutActor
from cluster.config import RunConfig, sub_seed, weight_transfer_backend
from cluster.learner_group import LearnerGroup, ready
from cluster.placement import Placement, address_in_bundle
from rollout.question import AudioQuestion, RolloutResult
from rollout.sampling import SamplingConfig

log = logging.getLogger("audio_grpo")
DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)


def get_within(futures: list, timeout_s: float, what: str, key: str) -> list:
    """`ray.get` with a deadline; past it, an error that says what hung and which setting bounds it."""
    try:
        return ray.get(futures, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{what} did not finish within {timeout_s:.0f}s ({key})") from None


@dataclass
class Rollouts:
    """Generation in flight: which worker holds which questions (`RolloutPool.collect` waits)."""

    questions: list[AudioQuestion]
    call: tuple
    pending: dict[int, list[int]]
    futures: dict[int, Any]

    def wait(self) -> None:
        """Block until every worker has finished (without fetching or checking the results)."""
        ray.wait(list(self.futures.values()), num_returns=len(self.futures))


class RolloutPool:
    """The rollout workers, the weight-sync group they share with learner rank 0, and recovery."""

    def __init__(
        self, config: RunConfig, placement: Placement, model_path: str, start_endpoint: Callable | None = None
    ):
        """`start_endpoint(options) -> actor`: the live endpoint (`deploy.live`), started on its
        bundle and made one more receiver of every weight update; None: no endpoint."""
        self.config, self.placement, self.model_path = config, placement, model_path
        self.workers = [self._start(i) for i in range(len(placement.rollout_bundles))]
        self._start_endpoint = start_endpoint
        self.endpoint = self._endpoint() if start_endpoint else None  # the workers start meanwhile
        ready(self.workers, timeout_s=config.train.generate_timeout_s)
        self.restarts = 0
        self.version = 0
        self.last_sync: dict[str, float] = {}
        self._learner: LearnerGroup | None = None

    def _start(self, index: int):
        cfg, bundle = self.config.rollout, self.placement.rollout_bundles[index]
        return RolloutActor.options(
            **self.placement.options(bundle, cfg.cpus_per_worker, cfg.gpus_per_worker)
        ).remote(
            self.model_path,
            cfg.engine,
            self.config.prompt,
            sub_seed(self.config.train.seed, "rollout", index),
            weight_transfer=self.backend,
            wait_s=self.config.sync.timeout_s,
        )

    def _endpoint(self):
        cfg = self.config.rollout
        bundle = self.placement.serve_bundles[0]
        return self._start_endpoint(self.placement.options(bundle, cfg.cpus_per_worker, cfg.gpus_per_worker))

    @property
    def receivers(self) -> list:
        """Everyone a weight update reaches: the rollout workers, then the live endpoint if any."""
        return self.workers + ([self.endpoint] if self.endpoint is not None else [])

    def _replace_receiver(self, index: int) -> None:
        if index < len(self.workers):
            return self._replace(index, reconnect=False)
        log.warning("the live endpoint died, hung or failed an update; starting a replacement")
        ray.kill(self.endpoint)
        self.endpoint = self._endpoint()
        self.restarts += 1

    def _replace(self, index: int, reconnect: bool = True) -> None:
        log.warning("rollout worker %d died, hung or failed an update; starting a replacement", index)
        try:
            ray.kill(self.workers[index])
        except Exception:  # noqa: BLE001 - it is already gone
            pass
        self.workers[index] = self._start(index)
        ready([self.workers[index]], timeout_s=self.config.train.generate_timeout_s)
        self.restarts += 1
        if reconnect and self._learner is not None:  # the new worker must hold the current policy first
            self.connect(self._learner)
            self.broadcast(self.version)

    def submit(
        self, questions: list[AudioQuestion], sampling: SamplingConfig, greedy: bool = False, **kwargs
    ) -> Rollouts:
        """Start generating: the questions are spread evenly over the workers (one batch each)."""
        chunks = [list(range(i, len(questions), len(self.workers))) for i in range(len(self.workers))]
        pending = {i: chunk for i, chunk in enumerate(chunks) if chunk}
        call = (sampling, greedy, kwargs)
        return Rollouts(questions, call, pending, self._launch(questions, call, pending))

    def _launch(self, questions, call, pending: dict[int, list[int]]) -> dict:
        sampling, greedy, kwargs = call
        return {
            i: self.workers[i].generate.remote(
                [questions[j] for j in chunk], sampling, greedy=greedy, **kwargs
            )
            for i, chunk in pending.items()
        }

    def collect(self, rollouts: Rollouts) -> list[RolloutResult]:
        """Wait for submitted work; a dead worker is replaced and its share generated again."""
        results: list[RolloutResult | None] = [None] * len(rollouts.questions)
        pending, futures = rollouts.pending, rollouts.futures
        for _attempt in range(self.config.train.max_retries + 1):
            failed = {}
            for i, future in futures.items():
                try:
                    answer = ray.get(future, timeout=self.config.train.generate_timeout_s)
                    for j, result in zip(pending[i], answer, strict=True):
                        results[j] = result
                except DEAD:
                    failed[i] = pending[i]
                except ray.exceptions.GetTimeoutError:  # hung: replaced like a dead one
                    log.warning("rollout worker %d gave no answer within train.generate_timeout_s", i)
                    failed[i] = pending[i]
            if not failed:
                return results  # type: ignore[return-value]
            for i in failed:
                self._replace(i)
            pending = failed
            futures = self._launch(rollouts.questions, rollouts.call, pending)
        raise RuntimeError(
            f"rollout workers kept dying; gave up after {self.config.train.max_retries} retries"
        )

    def generate(
        self, questions: list[AudioQuestion], sampling: SamplingConfig, greedy: bool = False, **kwargs
    ) -> list[RolloutResult]:
        """Completions for every question, spread evenly over the workers; dead workers are replaced."""
        return self.collect(self.submit(questions, sampling, greedy, **kwargs))

    @property
    def backend(self) -> str:
        return weight_transfer_backend(self.config)

    def connect(self, learner: LearnerGroup) -> None:
        """(Re)build the weight-transfer group: learner rank 0 is rank 0, then each engine's workers."""
        from cluster.sync_client import ReceiverClient

        self._learner = learner
        sync = self.config.sync
        host, port = address_in_bundle(self.placement, self.placement.learner_bundles[0])
        ranks = [self.config.rollout.engine.tensor_parallel_size] * len(self.receivers)
        init = {
            "master_address": host,
            "master_port": port,
            "world_size": 1 + sum(ranks),
            "bucket_bytes": sync.bucket_mb * 1024**2,
            "timeout_s": sync.timeout_s,
        }
        client = ReceiverClient(self.receivers, ranks, sync.timeout_s)
        learner.init_weight_transfer(self.backend, init, client, self.config.rollout.engine.dtype)

    def broadcast(self, version: int) -> float:
        """Push the learner's weights to every worker as `version`; return the seconds it took.

        A receiver that fails or does not answer within `sync.timeout_s` is replaced (its weights
        may be half old, half new, and its gate stays closed until then), the group is rebuilt and
        the update re-run whole, so every worker ends on exactly `version`. A transport that
        cannot work is an error at once: retrying would not help.
        """
        started = time.perf_counter()
        for attempt in range(self.config.train.max_retries + 1):
            outcome = self._learner.send_weights(version)
            if outcome["ok"]:
                self.version = version
                self.last_sync = {k: v for k, v in outcome.items() if isinstance(v, float)}
                return time.perf_counter() - started
            if outcome["fatal"]:
                raise RuntimeError(f"weight sync to version {version} cannot work: {outcome['error']}")
            failed = sorted(outcome["failed"]) or list(range(len(self.receivers)))
            log.warning(
                "weight sync to version %d failed (attempt %d: %s); replacing receivers %s and re-running it",
                version,
                attempt + 1,
                outcome["error"],
                failed,
            )
            for i in failed:
                self._replace_receiver(i)
            self.connect(self._learner)
        raise RuntimeError(
            f"weight sync to version {version} kept failing; gave up after "
            f"{self.config.train.max_retries} retries"
        )

    def versions(self) -> list[int]:
        """The policy version each receiver holds (rollout workers, then the endpoint if any)."""
        return ray.get([r.get_policy_version.remote() for r in self.receivers])


def _peak_rss_mb(_actor=None) -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_memory(learner: LearnerGroup, pool: RolloutPool, rewards) -> dict[str, list[float]]:
    """Peak resident memory (MiB) of every actor, by kind, plus this driver (`rewards`: the
    RewardPool; its model reward actors count as "reward_model")."""
    kinds = {"learner": learner.ranks, "rollout": pool.workers, "reward": rewards.actors}
    if rewards.models is not None:
        kinds["reward_model"] = [a for actors in rewards.models.actors for a in actors]
    out = {
        kind: ray.get([a.__ray_call__.remote(_peak_rss_mb) for a in actors]) for kind, actors in kinds.items()
    }
    out["driver"] = [_peak_rss_mb()]
    return out
