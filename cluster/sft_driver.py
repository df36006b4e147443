"""The SFT baseline's driver: the same data, placement, learner, evaluation, checkpoints and run
directory as GRPO (`cluster/driver.py`), with a supervised step in place of generate-reward-update.

Each step draws `train.questions_per_step` questions (the same `EpochSampler`), builds their
targets (`learner.sft.sft_batch`) and takes one update on the learner ranks. The rollout pool only
evaluates: before an evaluation the learner's weights go to it, as in GRPO, so held-out accuracy
is measured by the same vLLM engines, prompt and MMAU metric.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cluster.config import RunConfig, dump_config, expand_path
from cluster.driver import (
    Phases,
    _due,
    _finish,
    _load_data,
    _progress_bar,
    _question_source,
    _resume,
    _start_actors,
)
from cluster.evaluation import evaluate
from learner.checkpoint import prune_checkpoints

log = logging.getLogger("audio_grpo")


def train_sft(config: RunConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> Path:
    """Supervised fine-tuning to `train.max_steps` (from the last checkpoint with `resume`)."""
    from transformers import AutoTokenizer, GenerationConfig

    from cluster.metrics import MetricsSink, logged_eval_scores
    from cluster.placement import placement_record
    from cluster.plan import check_fits
    from learner.sft import sft_batch
    from rollout.sampling import end_token_ids

    plan = check_fits(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    (run_dir / "plan.txt").write_text(plan.render() + "\n")
    train_set, eval_set, skipped_rows = _load_data(config)
    placement, learner, pool, rewards = _start_actors(config)
    (run_dir / "placement.json").write_text(json.dumps(placement_record(placement), indent=1))
    start, position, checkpoint = _resume(run_dir, learner, pool) if resume else (0, 0, None)
    model = str(expand_path(config.model.path))
    tokenizer = AutoTokenizer.from_pretrained(model)
    end_id = end_token_ids(GenerationConfig.from_pretrained(model), tokenizer)[0]  # as generation ends
    draw = _question_source(train_set, config, position)
    metrics, held_out = MetricsSink(run_dir, config.name, start), logged_eval_scores(run_dir)
    bar = _progress_bar(config, start, progress)
    last_saved, train_cfg = checkpoint, config.train
    for step in range(start + 1, train_cfg.max_steps + 1):
        last, phases = step == train_cfg.max_steps, Phases()
        questions, position = draw()
        batch = sft_batch(questions, tokenizer, end_id)
        phases.mark("batch_s")
        update = learner.sft_step(batch)
        phases.mark("learner_s")
        record = {
            **{k: update[k] for k in ("loss", "grad_norm", "lr", "tokens")},
            "step": step,
            "samples": len(questions),
            "skipped_rows": skipped_rows,
            "data_position": position,
            "learner_restarts": learner.restarts,
        }
        if train_cfg.eval_every and _due(train_cfg.eval_every, step, last):
            pool.broadcast(step)
            phases.mark("weight_sync_s")
            scores = evaluate(pool, eval_set, config.sampling, run_dir / "eval" / f"step-{step}.json")
            record["eval_accuracy"] = held_out[step] = scores["total"]
        if _due(train_cfg.save_every, step, last):
            last_saved = run_dir / "checkpoints" / f"step-{step}"
            learner.save(str(last_saved), {"step": step, "data_position": position})
            prune_checkpoints(run_dir / "checkpoints", train_cfg.keep_checkpoints, held_out)
        record.update(phases.seconds())
        metrics.log(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        bar.update(1)
    bar.close()
    metrics.close()
    if pool.version != train_cfg.max_steps:
        pool.broadcast(train_cfg.max_steps)  # the pool ends on the final weights, as in GRPO
    _finish(run_dir, last_saved, placement, learner, pool, rewards)
    return run_dir
