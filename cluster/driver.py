"""The GRPO driver: sample, generate, reward, advantages, update, broadcast; evaluate and save.

`train(config, run_dir)` runs on the Ray driver (a local cluster it starts, or the cluster that
RAY_ADDRESS names, as under `ray job submit`). The run directory holds config.yaml,
metrics.jsonl, tensorboard/, eval/step-N.json and checkpoints/step-N/ (Hugging Face folders).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cluster.config import RunConfig, dump_config, expand_path
from cluster.datasets import load_questions
from learner.checkpoint import latest_checkpoint
from learner.grpo import group_advantages
from learner.learner import LearnerBatch
from reward.mmau import mmau_scores
from reward.rewards import extract_answer, summarize_scores
from rollout.audio import load_audio
from rollout.question import AudioQuestion

log = logging.getLogger("audio_grpo")


class Sampler:
    """Epoch-wise shuffled order over the training set; its whole state is `position`."""

    def __init__(self, size: int, seed: int, position: int = 0):
        self.size, self.seed, self.position = size, seed, position

    def take(self, count: int) -> list[int]:
        picked = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.size)
            picked.append(int(np.random.default_rng(self.seed + epoch).permutation(self.size)[offset]))
            self.position += 1
        return picked


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


def evaluate(pool, questions: list[AudioQuestion], config: RunConfig, out_path: Path) -> dict:
    """Greedy answers from the rollout pool, scored with MMAU's metric; predictions written to out_path."""
    sampling = replace(config.rollout.sampling, n=1)
    results = pool.generate(questions, sampling, greedy=True)
    items = []
    for q, result in zip(questions, results, strict=True):
        text = result.completions[0].text if result.completions else ""
        items.append(
            {
                **q.meta,
                "id": q.id,
                "question": q.question,
                "choices": q.choices,
                "answer": q.answer,
                "model_output": extract_answer(text),
                "response": text,
                "policy_version": result.policy_version,
            }
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(items, indent=1))
    return mmau_scores(items)


def _step_batch(
    questions: list[AudioQuestion], results, scores, n: int, eps: float, flip: bool, behaviour: bool
):
    """Keep questions that produced all n completions; build the learner batch and step figures."""
    kept = [
        (q, r) for q, r in zip(questions, results, strict=True) if not r.error and len(r.completions) == n
    ]
    flat = [s for s in scores if s is not None]
    rewards = torch.tensor([s.total for s in flat], dtype=torch.float32)
    advantages = group_advantages(rewards, n, eps=eps) * (-1.0 if flip else 1.0)
    batch = LearnerBatch(
        questions=[(q.question, q.choices) for q, _ in kept],
        waveforms=[load_audio(q.audio_path) for q, _ in kept],
        completions=[c.token_ids for _, r in kept for c in r.completions],
        question_index=[i for i, (_, r) in enumerate(kept) for _ in r.completions],
        advantages=advantages.tolist(),
        behaviour_logprobs=[c.logprobs for _, r in kept for c in r.completions] if behaviour else None,
    )
    return batch, flat


def train(config: RunConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> Path:
    import ray

    from cluster.assets import ensure_assets
    from cluster.metrics import MetricsSink
    from cluster.placement import make_placement
    from cluster.pool import LearnerGroup, RewardPool, RolloutPool, peak_memory

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    ensure_assets(config, log=lambda m: log.info(m))
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
    if config.train.questions_per_step % config.learner.num_ranks:
        raise ValueError(
            f"train.questions_per_step ({config.train.questions_per_step}) must be a multiple of "
            f"learner.num_ranks ({config.learner.num_ranks})"
        )
    eval_set = eval_set[: data.eval_max_items or None]
    sampling, n = config.rollout.sampling, config.rollout.sampling.n
    if config.train.overlap_rollout and sampling.temperature != 1.0:
        raise ValueError(
            "train.overlap_rollout corrects with the rollout engine's log-probs, which vLLM reports at "
            f"temperature 1; rollout.sampling.temperature is {sampling.temperature}"
        )
    config.learner.optim = replace(
        config.learner.optim, temperature=sampling.temperature, max_completion_length=sampling.max_tokens
    )

    connect_ray(config)
    model = str(expand_path(config.model.path))
    placement = make_placement(config)
    learner = LearnerGroup(config, placement, model)
    pool = RolloutPool(config, placement, model)
    rewards = RewardPool(config, placement)
    plan = learner.weight_plan(config.sync.bucket_mb * 1024**2)
    pool.connect(learner, plan)

    start, position = 0, 0
    checkpoint = latest_checkpoint(run_dir / "checkpoints") if resume else None
    if checkpoint is not None:
        state = learner.load(str(checkpoint))
        start, position = int(state["step"]), int(state["data_position"])
        pool.broadcast(start)
        log.info("resumed from %s (step %d, data position %d)", checkpoint, start, position)
    sampler = Sampler(len(train_set), config.train.seed, position)
    metrics = MetricsSink(run_dir, config.name, start)
    from tqdm import tqdm

    bar = tqdm(
        total=config.train.max_steps, initial=start, disable=not progress, file=sys.stderr, unit="step"
    )
    last_saved = None
    overlap = config.train.overlap_rollout
    qps = config.train.questions_per_step

    def next_questions() -> list[AudioQuestion]:
        return [train_set[i] for i in sampler.take(qps)]

    questions = next_questions()
    inflight = pool.submit(questions, sampling, want_logprobs=overlap)
    for step in range(start + 1, config.train.max_steps + 1):
        last = step == config.train.max_steps
        started = time.perf_counter()
        results = pool.collect(inflight)
        generated = time.perf_counter()
        position = sampler.position  # the data this step has consumed: a resume starts after it
        upcoming = None
        if overlap and not last:  # the next step's rollouts run during this update, on this policy
            upcoming = next_questions()
            inflight = pool.submit(upcoming, sampling, want_logprobs=True)
        texts = [c.text for r in results if not r.error for c in r.completions]
        answers = [
            q.answer for q, r in zip(questions, results, strict=True) if not r.error for _ in r.completions
        ]
        scores = rewards.score(texts, answers)
        scored = time.perf_counter()
        batch, flat = _step_batch(
            questions, results, scores, n, config.train.adv_eps, config.train.flip_advantages, overlap
        )
        prepared = time.perf_counter()
        update = learner.train_step(batch)
        learned = time.perf_counter()
        if upcoming is not None:
            inflight.wait()  # workers apply the broadcast only once their generation is done
        waited = time.perf_counter()
        sync_s = pool.broadcast(step)
        tokens = sum(len(c) for c in batch.completions)
        record = {
            "step": step,
            "policy_version": step,
            "rollout_version": min((r.policy_version for r in results), default=step - 1),
            **summarize_scores(flat),
            "kl": update["kl"],
            "loss": update["loss"],
            "grad_norm": update["grad_norm"],
            "lr": update["lr"],
            "clip_ratio": update["clip_ratio"],
            "response_length": tokens / max(1, len(batch.completions)),
            "samples": len(batch.completions),
            "generated_tokens_per_s": tokens / max(generated - started, 1e-9),
            "generate_s": generated - started,
            "reward_s": scored - generated,
            "batch_s": prepared - scored,
            "learner_s": learned - prepared,
            "rollout_wait_s": waited - learned,
            "weight_sync_s": sync_s,
            "step_s": time.perf_counter() - started,
            "skipped_rows": len(report.skipped),
            "failed_questions": sum(1 for r in results if r.error),
            "worker_restarts": pool.restarts + rewards.restarts,
            "data_position": position,
        }
        if config.train.eval_every and (
            step % config.train.eval_every == 0 or step == config.train.max_steps
        ):
            scores_eval = evaluate(pool, eval_set, config, run_dir / "eval" / f"step-{step}.json")
            record["eval_accuracy"] = scores_eval["total"]
        if (
            config.train.save_every and step % config.train.save_every == 0
        ) or step == config.train.max_steps:
            last_saved = run_dir / "checkpoints" / f"step-{step}"
            learner.save(str(last_saved), {"step": step, "data_position": position})
        metrics.log(record)
        bar.set_postfix(
            reward=f"{record['reward_mean']:.2f}",
            acc=f"{record['accuracy']:.2f}",
            kl=f"{record['kl']:.3f}",
            tok_s=f"{record['generated_tokens_per_s']:.0f}",
        )
        bar.update(1)
        if not overlap and not last:
            upcoming = next_questions()
            inflight = pool.submit(upcoming, sampling)
        questions = upcoming
    bar.close()
    metrics.close()
    versions = pool.versions()
    memory = peak_memory(learner, pool, rewards)
    ray.util.remove_placement_group(placement.group)
    summary = {
        "run_dir": str(run_dir),
        "checkpoint": str(last_saved or checkpoint),
        "metrics": str(run_dir / "metrics.jsonl"),
        "rollout_policy_versions": versions,
        "peak_rss_mib": memory,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return run_dir
