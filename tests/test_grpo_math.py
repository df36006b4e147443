"""GRPO math against hand-computed values, and gradients against finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from learner.grpo import completion_mask, group_advantages, grpo_loss, kl_k3, token_logprobs


def test_group_advantages_by_hand():
    rewards = torch.tensor([2.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 2.0])
    adv = group_advantages(rewards, group_size=4)
    # Group 1: mean 1, unbiased std sqrt(2/3); group 2: mean 0.5, std 1.
    s1 = math.sqrt(2 / 3)
    expected = [
        1 / (s1 + 1e-4),
        -1 / (s1 + 1e-4),
        0,
        0,
        -0.5 / 1.0001,
        -0.5 / 1.0001,
        -0.5 / 1.0001,
        1.5 / 1.0001,
    ]
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-6)


def test_equal_rewards_give_zero_advantage_and_eps_is_configurable():
    assert torch.equal(group_advantages(torch.ones(8), 8), torch.zeros(8))
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2, eps=1.0)
    assert torch.allclose(adv, torch.tensor([0.5 / (math.sqrt(0.5) + 1), -0.5 / (math.sqrt(0.5) + 1)]))
    assert torch.allclose(
        group_advantages(torch.tensor([3.0, 1.0]), 2, scale_by_std=False), torch.tensor([1.0, -1.0])
    )
    with pytest.raises(ValueError):
        group_advantages(torch.ones(7), 4)


def test_completion_mask_stops_after_the_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 2, 9, 9, 9], [5, 6, 7, 8, 9], [3, 6, 7, 8, 9]])
    mask = completion_mask(ids, eos_token_ids=[2, 3])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    pad = torch.tensor([[1, 1, 1, 1, 1]] * 3 + [[1, 1, 1, 0, 0]])
    assert completion_mask(ids, 2, pad_mask=pad)[3].tolist() == [1, 1, 1, 0, 0]


def test_token_logprobs_and_kl_k3_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    assert torch.allclose(token_logprobs(logits, torch.tensor([[1]])), torch.tensor([[math.log(0.75)]]))
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # d = ref - logp = log(0.5); exp(d) - d - 1 = 0.5 - log(0.5) - 1
    assert torch.allclose(kl_k3(logp, ref), torch.tensor([0.5 - math.log(0.5) - 1]))
    assert kl_k3(logp, logp).item() == 0.0


def small_case():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.1, -1.8, -0.4], [-0.5, -1.0, -1.0]], dtype=torch.float64)
    adv = torch.tensor([1.5, -0.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, ref, adv, mask


def per_token_by_hand(logp, ref, adv, beta):
    return -adv.unsqueeze(1) + beta * (torch.exp(ref - logp) - (ref - logp) - 1)  # ratio = 1


def test_loss_aggregations_by_hand():
    logp, ref, adv, mask = small_case()
    per = per_token_by_hand(logp, ref, adv, beta=0.04) * mask
    grpo = (per[0, :3].sum() / 3 + per[1, :2].sum() / 2) / 2
    assert torch.allclose(grpo_loss(logp, ref, adv, mask).loss, grpo)
    assert torch.allclose(grpo_loss(logp, ref, adv, mask, loss_type="bnpo").loss, per.sum() / 5)
    dr = grpo_loss(logp, ref, adv, mask, loss_type="dr_grpo", max_completion_length=4).loss
    assert torch.allclose(dr, per.sum() / (2 * 4))
    dapo = grpo_loss(logp, ref, adv, mask, loss_type="dapo", num_items_in_batch=10).loss
    assert torch.allclose(dapo, per.sum() / 10)
    out = grpo_loss(logp, ref, adv, mask)
    kl = (torch.exp(ref - logp) - (ref - logp) - 1) * mask
    assert out.kl == pytest.approx(float(kl.sum() / 5)) and out.clip_ratio == 0.0
    with pytest.raises(ValueError):
        grpo_loss(logp, ref, adv, mask, loss_type="ppo")


def test_the_masked_token_has_no_influence():
    logp, ref, adv, mask = small_case()
    changed = logp.clone()
    changed[1, 2] = -0.1
    assert torch.equal(grpo_loss(logp, ref, adv, mask).loss, grpo_loss(changed, ref, adv, mask).loss)


def test_clipping_is_inactive_at_one_update_and_active_with_stale_logps():
    logp, ref, adv, mask = small_case()
    old = logp - torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, 0.0]], dtype=torch.float64)
    out = grpo_loss(logp, ref, adv, mask, old_logp=old, beta=0.0)
    ratio = torch.exp(logp - old)
    # Row 0 (A > 0): ratio e^0.5 > 1.2 is clipped; e^-0.5 < 0.8 is not (min keeps the smaller). Row 1
    # (A < 0): ratio e^0.5 > 1.2 makes ratio*A the smaller, so it is not clipped.
    term = torch.minimum(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None])
    expected = -((term * mask).sum(1) / mask.sum(1)).mean()
    assert torch.allclose(out.loss, expected)
    assert out.clip_ratio == pytest.approx(1 / 5)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("stale", [False, True])
def test_gradient_matches_finite_differences(loss_type, stale):
    logp, ref, adv, mask = small_case()
    old = (logp - 0.1) if stale else None

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        # With old_logp None the ratio's denominator is detached: for finite differences the
        # denominator must be the fixed point at which the gradient is taken.
        fixed_old = old if stale else logp.detach()
        return grpo_loss(
            x,
            ref,
            adv,
            mask,
            old_logp=fixed_old,
            loss_type=loss_type,
            max_completion_length=3,
            num_items_in_batch=7,
        ).loss

    x = logp.clone().requires_grad_(True)
    analytic = torch.autograd.grad(loss_of(x), x)[0]
    numeric = torch.zeros_like(logp)
    h = 1e-6
    for i in range(logp.size(0)):
        for j in range(logp.size(1)):
            up, down = logp.clone(), logp.clone()
            up[i, j] += h
            down[i, j] -= h
            numeric[i, j] = (loss_of(up) - loss_of(down)) / (2 * h)
    assert torch.allclose(analytic, numeric, atol=1e-6), (analytic, numeric)
    assert analytic[1, 2] == 0.0  # masked


def test_gradient_pushes_up_positive_advantage_tokens():
    """d loss / d logp = -A / |o| + beta * (1 - exp(ref - logp)) / |o| for R1-AQA's grpo loss."""
    logp, ref, adv, mask = small_case()
    x = logp.clone().requires_grad_(True)
    grad = torch.autograd.grad(grpo_loss(x, ref, adv, mask).loss, x)[0]
    lengths = torch.tensor([3.0, 2.0], dtype=torch.float64)[:, None]
    expected = (-adv[:, None] + 0.04 * (1 - torch.exp(ref - logp))) / lengths / 2 * mask
    assert torch.allclose(grad, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_row_by_row_equal_the_full_log_softmax_with_gradients(dtype):
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 50) * 4).to(dtype).requires_grad_()
    ids = torch.randint(0, 50, (3, 5))
    reference = torch.gather((logits.float() / 0.7).log_softmax(-1), 2, ids.unsqueeze(-1)).squeeze(-1)
    ours = token_logprobs(logits, ids, temperature=0.7)
    assert ours.dtype == torch.float32 and torch.allclose(ours, reference, atol=1e-5)
    (grad_ref,) = torch.autograd.grad(reference.sum(), logits)
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    assert torch.allclose(grad_ours.float(), grad_ref.float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-6)
