"""The GRPO driver: generate, reward, advantages, update, sync weights; evaluate and save.

`train(config, run_dir)` runs on the Ray driver (a local cluster it starts, or the cluster that
RAY_ADDRESS names, as under `ray job submit`). The run directory holds config.yaml (exactly the
config that ran), metrics.jsonl, tensorboard/, eval/step-N.json, checkpoints/step-N/ (Hugging Face
folders) and summary.json. One step reads top to bottom in `train`; its bookkeeping is
`learner.grpo_step`, shared with the one-process loop.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config import RunConfig, dump_config, expand_path, sub_seed
from cluster.evaluation import evaluate
from cluster.rollout_queue import RolloutQueue
from learner.checkpoint import latest_checkpoint, prune_checkpoints
from learner.grpo_step import (
    assemble_batch,
    caption_statistics,
    responses_and_targets,
    step_record,
    usable_groups,
)
from reward.held_out import eval_record
from rollout.datasets import EpochSampler, load_questions

log = logging.getLogger("audio_grpo")


def connect_ray(config: RunConfig) -> None:
    import ray

    from cluster.placement import required_cpus

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)  # the cluster RAY_ADDRESS names (ray job submit sets it)
    else:
        cpus = max(os.cpu_count() or 1, int(required_cpus(config)) + 1)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)


def _load_data(config: RunConfig):
    data = config.data
    train_set, report = load_questions(expand_path(data.train), data.audio_root or None, strict=data.strict)
    eval_set, eval_report = load_questions(
        expand_path(data.eval), data.eval_audio_root or None, strict=data.strict, allow_duplicate_choices=True
    )
    for r in (report, eval_report):
        (log.warning if r.skipped else log.info)(r.summary(max_listed=5))
    if len(train_set) < config.train.questions_per_step:
        raise ValueError(
            f"{len(train_set)} valid training questions, fewer than one step's "
            f"{config.train.questions_per_step}"
        )
    return train_set, eval_set[: data.eval_max_items or None], len(report.skipped)


class Phases:
    """Seconds per phase of one step: `mark(name)` ends the phase that ran since the last mark."""

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self._seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self._seconds[name], self.last = now - self.last, now

    def seconds(self) -> dict[str, float]:
        return {**self._seconds, "step_s": time.perf_counter() - self.started}


def _due(every: int, step: int, last: bool) -> bool:
    """Whether a periodic action (evaluation, checkpoint) runs after `step`: every `every` steps
    and after the last (`every` 0: only after the last)."""
    return last or bool(every and step % every == 0)


def _show(bar, record: dict) -> None:
    bar.set_postfix(
        reward=f"{record['reward_mean']:.2f}",
        acc=f"{record.get('accuracy', record.get('cider_d', 0.0)):.2f}",
        kl=f"{record['kl']:.3f}",
        tok_s=f"{record['generated_tokens_per_s']:.0f}",
    )
    bar.update(1)


def _progress_bar(config: RunConfig, start: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=config.train.max_steps, initial=start, disable=not enabled, file=sys.stderr, unit="step"
    )


def _start_actors(config: RunConfig, start_endpoint=None, cider=None):
    """The placement group, then the learner ranks, the rollout pool (and the live endpoint, if
    any: both joined to the learner's weight transfer) and the reward actors (with `cider`, the
    training corpus's CIDEr-D statistics)."""
    from cluster.learner_group import LearnerGroup
    from cluster.placement import make_placement
    from cluster.pool import RolloutPool
    from cluster.reward_pool import RewardPool

    connect_ray(config)
    model = str(expand_path(config.model.path))
    placement = make_placement(config)
    learner = LearnerGroup(config, placement, model, wait=False)  # loads while the engines start
    pool = RolloutPool(config, placement, model, start_endpoint)
    rewards = RewardPool(config, placement, cider)
    learner.wait_ready()
    pool.connect(learner)
    return placement, learner, pool, rewards


def _resume(run_dir: Path, learner, pool) -> tuple[int, int, Path | None]:
    """(step, data position, checkpoint) of the run's last complete checkpoint, loaded into the
    learner and broadcast to the rollout pool; (0, 0, None) when there is none."""
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        return 0, 0, None
    state = learner.load(str(checkpoint))
    start, position = int(state["step"]), int(state["data_position"])
    pool.broadcast(start)
    log.info("resumed from %s (step %d, data position %d)", checkpoint, start, position)
    return start, position, checkpoint


@dataclass
class _Run:
    """What every step of one run reads; `queue`, `metrics` and `held_out` are reset when the
    learner is rebuilt from a checkpoint."""

    config: RunConfig
    run_dir: Path
    learner: Any
    pool: Any
    rewards: Any
    train_set: list
    eval_set: list
    skipped_rows: int
    placement: Any = None
    queue: RolloutQueue | None = None
    metrics: Any = None
    held_out: dict[int, float] = field(default_factory=dict)  # step -> held-out accuracy

    def start_from(self, position: int) -> None:
        """Draw from data `position` on (a new rollout queue) and read the held-out scores so far."""
        from cluster.metrics import logged_eval_scores

        draw = _question_source(self.train_set, self.config, position)
        ahead = self.config.train.overlap_rollout
        self.queue = RolloutQueue(self.pool, draw, self.config.sampling, ahead=ahead)
        self.held_out = logged_eval_scores(self.run_dir)

    def rewind(self, start: int, position: int) -> None:
        """Continue after step `start` at data `position`: metrics after `start` dropped (they are
        redone, never double-counted), then `start_from`."""
        self.metrics.rewind(start)
        self.start_from(position)

    def evaluate_and_save(self, step: int, position: int, record: dict[str, Any]) -> Path | None:
        """Held-out evaluation and a checkpoint when due (the accuracy goes into `record`);
        returns the checkpoint written, if any."""
        train_cfg, last = self.config.train, step == self.config.train.max_steps
        if train_cfg.eval_every and _due(train_cfg.eval_every, step, last):  # 0: never
            out = self.run_dir / "eval" / f"step-{step}.json"
            models = self.rewards.models.score if self.rewards.models else None
            scores = evaluate(self.pool, self.eval_set, self.config.sampling, out, models)
            record.update(eval_record(scores))
            self.held_out[step] = scores["total"]
        if not _due(train_cfg.save_every, step, last):
            return None
        saved = self.run_dir / "checkpoints" / f"step-{step}"
        self.learner.save(str(saved), {"step": step, "data_position": position})
        keep = train_cfg.keep_checkpoints
        for gone in prune_checkpoints(self.run_dir / "checkpoints", keep, self.held_out):
            log.info("removed %s (train.keep_checkpoints=%d, best held-out kept)", gone, keep)
        return saved


def start_run(
    config: RunConfig, run_dir: Path, resume: bool, start_endpoint=None
) -> tuple[_Run, int, Path | None]:
    """What GRPO and SFT runs share before their first step: the memory check (a config that cannot
    fit stops here, before anything starts), config.yaml and plan.txt, the data, the actors and
    placement.json, the resume point and the metrics. Returns the run, its start step and the
    checkpoint it resumed from."""
    from cluster.metrics import MetricsSink
    from cluster.placement import placement_record
    from cluster.plan import check_fits

    plan = check_fits(config)
    config = plan.config  # what `auto` became (plan.txt says why): every actor reads these numbers
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    (run_dir / "plan.txt").write_text(plan.render() + "\n")
    train_set, eval_set, skipped_rows = _load_data(config)
    placement, learner, pool, rewards = _start_actors(config, start_endpoint, caption_statistics(train_set))
    (run_dir / "placement.json").write_text(json.dumps(placement_record(placement), indent=1))
    start, position, checkpoint = _resume(run_dir, learner, pool) if resume else (0, 0, None)
    run = _Run(config, run_dir, learner, pool, rewards, train_set, eval_set, skipped_rows, placement)
    run.metrics = MetricsSink(run_dir, config.name, start)  # drops what was logged after `start`
    run.start_from(position)
    return run, start, checkpoint


def train(
    config: RunConfig, run_dir: Path, resume: bool = False, progress: bool = True, start_endpoint=None
) -> Path:
    """Run GRPO to `train.max_steps` (from the last checkpoint with `resume`); returns `run_dir`.
    `start_endpoint(options) -> actor`: the live endpoint (`deploy.live.endpoint_starter`), which
    receives every weight update like a rollout worker (with `serve.enabled`). A learner rank that
    dies is rebuilt from the last checkpoint and the steps since are redone (`train.max_retries`)."""
    from cluster.learner_group import LearnerLost

    run, start, checkpoint = start_run(config, run_dir, resume, start_endpoint)
    learner, pool = run.learner, run.pool
    bar = _progress_bar(config, start, progress)
    last_saved, step = checkpoint, start + 1
    while step <= config.train.max_steps:
        try:
            record, saved = _step(run, step)
        except LearnerLost as err:
            if learner.restarts >= config.train.max_retries:
                raise RuntimeError(f"the learner died {learner.restarts + 1} times; giving up") from err
            log.warning("%s: rebuilding the learner from the last checkpoint", err)
            start, position, last_saved = _rebuild_learner(run_dir, learner, pool)
            run.rewind(start, position)
            bar.n, step = start, start + 1
            continue
        last_saved = saved or last_saved
        run.metrics.log(record)
        _show(bar, record)
        step += 1
    bar.close()
    run.metrics.close()
    _finish(run_dir, last_saved, run.placement, learner, pool, run.rewards)
    return run_dir


def _step(run: _Run, step: int) -> tuple[dict[str, Any], Path | None]:
    """One GRPO step, read top to bottom: generate, reward, advantages, update, sync; evaluate and
    save when due. Returns its metrics record and the checkpoint it wrote, if any."""
    train_cfg, sampling, last = run.config.train, run.config.sampling, step == run.config.train.max_steps
    phases = Phases()
    rollouts = run.queue.take(more=not last)
    phases.mark("generate_s")
    groups = usable_groups(rollouts.questions, rollouts.results, sampling.n)
    clips = [q.audio_path for q, r in groups for _ in r.completions]  # what reward models compare with
    scores = run.rewards.score(*responses_and_targets(groups), clips)
    phases.mark("reward_s")
    batch = assemble_batch(
        groups,
        scores,
        adv_eps=train_cfg.adv_eps,
        flip_advantages=train_cfg.flip_advantages,
        with_logprobs=run.queue.ahead,  # off-policy rollouts bring the ratio's denominator
    )
    phases.mark("batch_s")
    update = run.learner.train_step(batch)
    phases.mark("learner_s")
    run.queue.settle()  # workers apply a weight sync only once their generation is done
    phases.mark("rollout_wait_s")
    run.pool.broadcast(step)
    phases.mark("weight_sync_s")
    record = {
        **step_record(step, rollouts.results, scores, batch, update, phases.seconds()),
        "policy_version": step,
        "skipped_rows": run.skipped_rows,
        "worker_restarts": run.pool.restarts + run.rewards.restarts,
        "learner_restarts": run.learner.restarts,
        "data_position": rollouts.data_position,
    }
    return record, run.evaluate_and_save(step, rollouts.data_position, record)


def _rebuild_learner(run_dir: Path, learner, pool) -> tuple[int, int, Path | None]:
    """New learner ranks, joined to the weight transfer, loaded from the last checkpoint (or the
    base model) and sent to every receiver: (step, data position, checkpoint) to go on from."""
    learner.restart()
    pool.connect(learner)
    start, position, checkpoint = _resume(run_dir, learner, pool)
    if checkpoint is None:
        pool.broadcast(0)  # no checkpoint yet: the base weights again, as version 0
    return start, position, checkpoint


def _question_source(train_set, config: RunConfig, position: int):
    """`draw()` -> (the next step's questions, the data position after them), from `position` on."""
    sampler = EpochSampler(len(train_set), sub_seed(config.train.seed, "data"), position)

    def draw():
        picked = [train_set[i] for i in sampler.take(config.train.questions_per_step)]
        return picked, sampler.position

    return draw


def _finish(run_dir: Path, checkpoint, placement, learner, pool, rewards) -> None:
    """Write summary.json (last checkpoint, the workers' policy versions, peak memory per actor
    kind) and release the placement group."""
    import ray

    from cluster.pool import peak_memory

    summary = {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "metrics": str(run_dir / "metrics.jsonl"),
        "rollout_policy_versions": pool.versions(),  # the live endpoint's last, when serving
        "peak_rss_mib": peak_memory(learner, pool, rewards),
    }
    ray.util.remove_placement_group(placement.group)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
