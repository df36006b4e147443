"""One GRPO update on one learner rank, top to bottom: encode the questions once, cut them into
micro-batches, take the log-probs the update holds fixed (the reference's, the ratio's
denominator), then per micro-batch the policy's log-probs, `grpo_loss`, backward and the
optimizer step (DeepSpeed accumulates over the micro-batches and steps at the last).

`learner` is a `learner.learner.Learner` (its public step pieces: `encode`, `micro_batches`,
`logprobs`, `reference_logprobs`, `begin_update`, `backward`, `optimizer_step`, `finish_update`,
`sum_over_ranks`); this module does not import it, so the two never import each other.
"""

from __future__ import annotations

from typing import Any

import torch

from learner.batch import LearnerBatch, MicroBatch, behaviour_logprobs
from learner.grpo import grpo_loss


def grpo_update(learner: Any, batch: LearnerBatch) -> dict[str, float]:
    """One GRPO update (or `loss.updates_per_batch` of them) on this rank's share of the batch."""
    cfg = learner.config.loss
    if not batch.completions:
        raise ValueError("empty batch")
    encoded = learner.encode(batch)
    micro = learner.micro_batches(batch, encoded)
    n_responses = sum(m.responses for m in micro)
    n_tokens = sum(m.tokens for m in micro)
    # dapo divides by the step's tokens on every rank (TRL's num_items_in_batch); DeepSpeed then
    # averages the ranks' gradients, hence / world_size: ranks with short completions are not
    # over-weighted.
    step_tokens = learner.sum_over_ranks(n_tokens) / learner.world_size
    lr = learner.begin_update(len(micro))
    refs, olds = fixed_logprobs(learner, batch, encoded, micro)
    totals = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0}
    grad_norm = None
    for _ in range(cfg.updates_per_batch):
        for i, (m, ref, old) in enumerate(zip(micro, refs, olds, strict=True)):
            with learner.phase("forward"):
                logp = learner.logprobs(m, encoded)
                device = logp.device
                out = grpo_loss(
                    logp,
                    ref.to(device) if ref is not None else None,
                    m.advantages.to(device),
                    m.rows.completion_mask.to(device),
                    old_logp=old.to(device) if old is not None else None,
                    beta=cfg.beta,
                    epsilon_low=cfg.epsilon_low,
                    epsilon_high=cfg.epsilon_high,
                    loss_type=cfg.loss_type,
                    max_completion_length=learner.config.sampling.max_tokens,
                    num_items_in_batch=step_tokens,
                )
            weight, tokens_share = micro_weight(cfg.loss_type, m, n_responses, n_tokens, len(micro))
            learner.backward(out.loss * weight)
            grad_norm = learner.optimizer_step(last=i == len(micro) - 1) or grad_norm
            totals["loss"] += out.loss.item() * weight / cfg.updates_per_batch
            totals["kl"] += out.kl * tokens_share / cfg.updates_per_batch
            totals["clip_ratio"] += out.clip_ratio * tokens_share / cfg.updates_per_batch
    return {
        **totals,
        **learner.finish_update(grad_norm),
        "lr": lr,
        "responses": n_responses,
        "tokens": n_tokens,
    }


@torch.no_grad()
def fixed_logprobs(learner: Any, batch: LearnerBatch, encoded, micro: list[MicroBatch]) -> tuple[list, list]:
    """Per micro-batch, the log-probs the update holds fixed: the reference's (for the KL), and
    the ratio's denominator: the sampling policy's when the rollouts came with them, else this
    policy before the update (which only matters for several updates per batch)."""
    with learner.phase("reference"):
        refs = learner.reference_logprobs(batch, micro, encoded)
        if batch.behaviour_logprobs:
            olds = [behaviour_logprobs(batch, m) for m in micro]
        elif learner.config.loss.updates_per_batch > 1:
            olds = learner.old_logprobs(batch, micro, encoded)
        else:
            olds = [None] * len(micro)
    return refs, olds


def micro_weight(
    loss_type: str, micro: MicroBatch, n_responses: int, n_tokens: float, n_micro: int
) -> tuple[float, float]:
    """(loss weight, token share) of one micro-batch, as TRL weighs them: grpo and dr_grpo per
    response; bnpo each micro-batch's own token mean, averaged over the micro-batches (so it
    depends on the micro-batch size, as TRL documents); dapo already divided by the step's
    tokens (`num_items_in_batch`)."""
    tokens_share = micro.tokens / max(n_tokens, 1.0)
    if loss_type in ("grpo", "dr_grpo"):
        return micro.responses / n_responses, tokens_share
    return (1.0 / n_micro if loss_type == "bnpo" else 1.0), tokens_share
