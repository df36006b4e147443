"""The reward actors: rule rewards (`RewardActor`, many small ones) and model rewards
(`ModelRewardActor`, one kind per `reward.models` spec, on its own resources).

Work is spread over a kind's actors; one that dies or misses `train.reward_timeout_s` is replaced
in its own bundle and exactly its share is scored again (`spread`), as the rollout pool does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import ray

from cluster.actors import ModelRewardActor, RewardActor
from cluster.config import RunConfig, expand_path
from cluster.placement import Placement
from reward.captions import CiderD
from reward.rewards import RewardScore, with_similarity
from reward_models.spec import RewardModelSpec

log = logging.getLogger("audio_grpo")
DEAD = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


def spread(
    actors: list,
    n_items: int,
    call: Callable[[Any, list[int]], Any],
    replace: Callable[[int], None],
    timeout_s: float,
    retries: int,
    what: str,
) -> list:
    """`call(actor, indices) -> future` over every actor's share of `n_items`; a share whose actor
    died or hung is re-run on its replacement (`replace(i)`). Results in item order."""
    shares = [list(range(i, n_items, len(actors))) for i in range(len(actors))]
    out: list = [None] * n_items
    pending = [i for i, share in enumerate(shares) if share]
    for _attempt in range(retries + 1):
        futures = {i: call(actors[i], shares[i]) for i in pending}
        pending = []
        for i, future in futures.items():
            try:
                for j, value in zip(shares[i], ray.get(future, timeout=timeout_s), strict=True):
                    out[j] = value
            except (*DEAD, ray.exceptions.GetTimeoutError):
                log.warning("%s %d died or hung; starting a replacement", what, i)
                pending.append(i)
                replace(i)
        if not pending:
            return out
    raise RuntimeError(f"{what}s kept dying; gave up after {retries} retries")


class ModelRewards:
    """The model reward actors, one group per `reward.models` spec, each in its own bundles."""

    def __init__(self, config: RunConfig, placement: Placement):
        self.config, self.placement = config, placement
        self.specs: tuple[RewardModelSpec, ...] = config.reward.models
        self.actors = [
            [self._start(k, b) for b in bundles] for k, bundles in enumerate(placement.model_bundles)
        ]
        self.restarts = 0

    def _start(self, k: int, bundle: int):
        spec = self.specs[k]
        device = "cuda" if spec.gpus_per_actor else "cpu"
        options = self.placement.options(bundle, spec.cpus_per_actor, spec.gpus_per_actor)
        return ModelRewardActor.options(**options).remote(
            str(expand_path(spec.path)), device, spec.dtype, spec.batch_size
        )

    def _replace(self, k: int, i: int) -> None:
        ray.kill(self.actors[k][i])
        self.actors[k][i] = self._start(k, self.placement.model_bundles[k][i])
        self.restarts += 1

    def score(self, audio_paths: Sequence[str], responses: Sequence[str]) -> dict[str, list[float]]:
        """Each spec's reward of each response (by its name, e.g. similarity_clap)."""
        out = {}
        for k, spec in enumerate(self.specs):
            out[spec.name] = spread(
                self.actors[k],
                len(responses),
                lambda actor, share: actor.score.remote(
                    [audio_paths[j] for j in share], [responses[j] for j in share]
                ),
                lambda i, k=k: self._replace(k, i),
                self.config.train.reward_timeout_s,
                self.config.train.max_retries,
                f"reward model {spec.name} actor",
            )
        return out

    def combine(self, scores: list[RewardScore], parts: dict[str, list[float]]) -> list[RewardScore]:
        """The rule scores with every model's weighted reward added to their totals."""
        for spec in self.specs:
            scores = [
                with_similarity(s, v, spec.weight) for s, v in zip(scores, parts[spec.name], strict=True)
            ]
        return scores


class RewardPool:
    """Rule reward actors (and, with `reward.models`, the model reward actors: `.models`).

    `cider`: CIDEr-D's statistics of the training corpus (caption runs), counted once by the driver
    and put in the object store once: every actor, replacements included, reads the same."""

    def __init__(self, config: RunConfig, placement: Placement, cider: CiderD | None = None):
        self.config, self.placement = config, placement
        self.cider = ray.put(cider)
        self.actors = [self._start(b) for b in placement.reward_bundles]
        self.models = ModelRewards(config, placement) if config.reward.models else None
        self._restarts = 0

    @property
    def restarts(self) -> int:
        return self._restarts + (self.models.restarts if self.models else 0)

    def _start(self, bundle: int):
        reward = self.config.reward
        return RewardActor.options(**self.placement.options(bundle, 0.1, 0)).remote(
            reward.weights, self.config.prompt.thinking, reward.accuracy_rule, self.cider
        )

    def _replace(self, i: int) -> None:
        ray.kill(self.actors[i])
        self.actors[i] = self._start(self.placement.reward_bundles[i])
        self._restarts += 1

    def score(self, responses: list[str], targets: list, audio_paths: list[str] | None = None) -> list:
        """Each response scored against its target (an answer, or a clip's reference captions);
        with reward models, their rewards of the response and its clip are added (weighted)."""
        scores = spread(
            self.actors,
            len(responses),
            lambda actor, share: actor.score.remote(
                [responses[j] for j in share], [targets[j] for j in share]
            ),
            self._replace,
            self.config.train.reward_timeout_s,
            self.config.train.max_retries,
            "reward actor",
        )
        if self.models is None or audio_paths is None:
            return scores
        return self.models.combine(scores, self.models.score(audio_paths, responses))
