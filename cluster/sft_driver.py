"""The SFT baseline's driver: the same data, placement, learner, evaluation, checkpoints and run
directory as GRPO (`cluster/driver.py`), with a supervised step in place of generate-reward-update.

Each step draws `train.questions_per_step` questions (the same `EpochSampler`), builds their
targets (`learner.sft.sft_batch`) and takes one update on the learner ranks. The rollout pool only
evaluates: before an evaluation the learner's weights go to it, as in GRPO, so held-out accuracy
is measured by the same vLLM engines, prompt and MMAU metric.
"""

from __future__ import annotations

from pathlib import Path

from cluster.config import RunConfig, expand_path
from cluster.driver import Phases, _due, _finish, _progress_bar, start_run


def train_sft(config: RunConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> Path:
    """Supervised fine-tuning to `train.max_steps` (from the last checkpoint with `resume`)."""
    from transformers import AutoTokenizer, GenerationConfig

    from learner.grpo_step import learner_phases
    from learner.sft import sft_batch
    from rollout.sampling import end_token_ids

    run, start, last_saved = start_run(config, run_dir, resume)
    model = str(expand_path(config.model.path))
    tokenizer = AutoTokenizer.from_pretrained(model)
    end_id = end_token_ids(GenerationConfig.from_pretrained(model), tokenizer)[0]  # as generation ends
    draw = run.queue.draw  # the run's data order from its resume position (no rollouts: SFT)
    bar = _progress_bar(config, start, progress)
    for step in range(start + 1, config.train.max_steps + 1):
        phases = Phases()
        questions, position = draw()
        batch = sft_batch(questions, tokenizer, end_id, thinking=config.prompt.thinking)
        phases.mark("batch_s")
        update = run.learner.sft_step(batch)
        phases.mark("learner_s")
        record = {
            **{k: update[k] for k in ("loss", "grad_norm", "lr", "tokens")},
            **learner_phases(update),
            "step": step,
            "samples": len(questions),
            "skipped_rows": run.skipped_rows,
            "data_position": position,
            "learner_restarts": run.learner.restarts,
        }
        if config.train.eval_every and _due(config.train.eval_every, step, step == config.train.max_steps):
            run.pool.broadcast(step)  # the evaluating engines get this step's weights first
            phases.mark("weight_sync_s")
        last_saved = run.evaluate_and_save(step, position, record) or last_saved
        record.update(phases.seconds())
        run.metrics.log(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        bar.update(1)
    bar.close()
    run.metrics.close()
    if run.pool.version != config.train.max_steps:
        run.pool.broadcast(config.train.max_steps)  # the pool ends on the final weights, as in GRPO
    _finish(run_dir, last_saved, run.placement, run.learner, run.pool, run.rewards)
    return run_dir
