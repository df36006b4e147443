"""GRPO, as plain torch functions with the paper's names. No Ray, no DeepSpeed, no model.

One step of R1-AQA's GRPO: for each question, G completions are sampled; their rewards are
normalised within the group (`group_advantages`); each completion token's log-probability under
the policy is pushed up or down by its advantage, with a k3 KL penalty to a frozen reference
(`kl_k3`); `grpo_loss` aggregates per-token losses into one scalar (`loss_type`).

Shapes: rewards [N] with N = questions x G, grouped consecutively; token tensors [N, T], where T
is the padded completion length and `mask` marks real completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from learner.config import LossType


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale_by_std: bool = True
) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps), R1-AQA/TRL's normalisation (unbiased std).

    `scale_by_std=False` gives Dr. GRPO's unscaled advantage r - mean_group.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size).float()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred)
        centred = centred / (std + eps)
    return centred.reshape(-1)


def completion_mask(
    completion_ids: torch.Tensor, eos_token_ids: list[int] | int, pad_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """1 for every token up to and including the first end-of-sequence token, 0 after it.

    `pad_mask` (1 = real token) additionally removes right padding.
    """
    eos_ids = torch.tensor(
        [eos_token_ids] if isinstance(eos_token_ids, int) else eos_token_ids, device=completion_ids.device
    )
    is_eos = torch.isin(completion_ids, eos_ids)
    # The number of EOS tokens strictly before each position: 0 means "still inside the completion".
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    mask = (eos_before == 0).int()
    if pad_mask is not None:
        mask = mask * pad_mask.int()
    return mask


def _log_normaliser(row: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.logsumexp(row.float() / temperature, dim=-1)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) for each position: logits [N, T, V] already aligned with token_ids [N, T].

    The sampled token's logit minus the log-normaliser, one row at a time, the row's float32 copy
    recomputed in the backward pass (checkpointed): never a float32 [N, T, V] tensor, in the forward
    or saved for the backward (a 156k vocabulary makes that about 1.3 GB per micro-batch). The same
    numbers as `log_softmax` then `gather` (tested).
    """
    picked = torch.gather(logits, 2, token_ids.unsqueeze(-1)).squeeze(-1).float() / temperature
    norms = [
        checkpoint(_log_normaliser, row, temperature, use_reentrant=False)
        if row.requires_grad
        else _log_normaliser(row, temperature)
        for row in logits
    ]
    return picked - torch.stack(norms)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference), per token: exp(d) - d - 1, d = ref - logp."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


@dataclass
class LossOutput:
    loss: torch.Tensor
    kl: float  # mean per-token k3 KL over the masked tokens
    clip_ratio: float  # fraction of masked tokens where the clipped term was the active one


def grpo_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    beta: float = 0.04,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: LossType = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
) -> LossOutput:
    """The GRPO objective, negated for minimisation.

    Per token: -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3, with ratio =
    exp(logp - old_logp). With one update per batch `old_logp` is `logp.detach()`, the ratio is 1
    and clipping is inactive (R1-AQA); with several updates it is the rollout's log-probs.

    Aggregation (`loss_type`):
    - grpo: mean over each response's tokens, then over responses (R1-AQA)
    - bnpo: mean over all tokens of this (micro-)batch; the learner averages micro-batches (TRL's)
    - dr_grpo: sum over tokens / (responses x max_completion_length)
    - dapo: sum over tokens / `num_items_in_batch` (the step's tokens over every micro-batch and
      rank, divided by the ranks whose gradients DeepSpeed averages: TRL's global normaliser)
    """
    mask = mask.to(logp.dtype)
    if old_logp is None:
        old_logp = logp.detach()
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.unsqueeze(1)
    unclipped_term, clipped_term = ratio * adv, clipped * adv
    per_token = -torch.min(unclipped_term, clipped_term)
    kl = torch.zeros_like(logp)
    if beta != 0.0 and ref_logp is not None:
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + beta * kl

    tokens = mask.sum().clamp(min=1.0)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / tokens
    elif loss_type == "dr_grpo":
        length = max_completion_length or logp.size(1)
        loss = (per_token * mask).sum() / (logp.size(0) * length)
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / (num_items_in_batch if num_items_in_batch else tokens)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")

    with torch.no_grad():
        is_clipped = (clipped_term < unclipped_term).to(mask.dtype)
        clip_ratio = float((is_clipped * mask).sum() / tokens)
        mean_kl = float((kl * mask).sum() / tokens)
    return LossOutput(loss=loss, kl=mean_kl, clip_ratio=clip_ratio)
