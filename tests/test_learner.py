"""The DeepSpeed learner: real engine, real gradients; world sizes 1 and 2; ZeRO 0 to 3."""

from __future__ import annotations

import pytest
import torch
from helpers import batch_rows, flat_params, make_learner, make_learner_config, pitch_batch, tone

from cluster.network import free_port
from learner.learner import Learner
from learner.policy import audio_embeddings, completion_logprobs, encode_questions
from rollout.audio import SAMPLE_RATE


def assert_same_update(a: torch.Tensor, b: torch.Tensor, lr: float = 1e-3, flipped: float = 1e-4) -> None:
    """Weights after one Adam step from the same start agree. Adam's first step is about
    lr * sign(g): float rounding can flip the sign of a near-zero gradient and move that weight by
    up to 2 * lr, so a `flipped` fraction of such weights is allowed; every other one must agree."""
    diff = (a - b).abs()
    assert diff.max() <= 2 * lr + 1e-6 and (diff > 1e-4).float().mean() < flipped, diff.max()


def choice_logprobs(learner: Learner, batch) -> torch.Tensor:
    """log p of each completion's choice token ('>high' or '>low', the second token) per row."""
    encoded = encode_questions(learner.processor, batch.questions, batch.waveforms)
    rows = batch_rows(learner, batch, encoded)
    with torch.no_grad():
        audio = audio_embeddings(learner.model, encoded.input_features, encoded.feature_attention_mask)
        logp = completion_logprobs(learner.model, rows, audio)
    return logp[:, 1]


@pytest.mark.parametrize(
    ("zero_stage", "dtype", "reference_offload"),
    [(0, "float32", False), (1, "bfloat16", False), (2, "bfloat16", False), (3, "bfloat16", True)]
    + [(3, "float32", False)],
)
def test_train_step_updates_the_policy_and_reports_metrics(
    tiny_model_dir, zero_stage, dtype, reference_offload
):
    learner = make_learner(
        tiny_model_dir, zero_stage=zero_stage, dtype=dtype, reference_offload=reference_offload
    )
    assert next(learner.model.parameters()).dtype == getattr(torch, dtype)  # loaded in its training dtype
    batch = pitch_batch(learner.processor.tokenizer)
    before = flat_params(learner.model).clone() if zero_stage < 3 else None
    first = learner.train_step(batch)
    second = learner.train_step(batch)
    assert first["step"] == 1 and second["step"] == 2
    assert first["kl"] == 0.0 and second["kl"] > 0.0  # the policy has left the reference
    assert all(torch.isfinite(torch.tensor(v)) for k, v in second.items() if k != "step")
    assert second["grad_norm"] > 0 and second["lr"] == pytest.approx(1e-3)
    assert first["responses"] == 8 and first["tokens"] > 8
    # Where the step went: each phase took time, and together they fit inside the step.
    phases = [second[f"learner_{name}_s"] for name in ("reference", "forward", "backward", "optimizer")]
    assert all(seconds > 0 for seconds in phases), second
    if before is not None:
        assert not torch.equal(before, flat_params(learner.model))


def test_positive_advantage_completions_become_more_likely(tiny_model_dir):
    learner = make_learner(tiny_model_dir, beta=0.0)
    batch = pitch_batch(learner.processor.tokenizer)
    before = choice_logprobs(learner, batch)
    for _ in range(3):
        learner.train_step(batch)
    change = choice_logprobs(learner, batch) - before
    advantages = torch.tensor(batch.advantages)
    assert (change[advantages > 0] > 0).all() and (change[advantages < 0] < 0).all(), change


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, loss_type):
    """Micro-batches of one question give the same update as the whole shard at once (bnpo is, as in
    TRL, each micro-batch's own token mean, so it depends on the micro-batch size)."""
    results = []
    for micro in (1, 2):
        learner = make_learner(
            tiny_model_dir, micro_batch_questions=micro, loss_type=loss_type, max_grad_norm=1e9
        )
        metrics = learner.train_step(pitch_batch(learner.processor.tokenizer))
        results.append((flat_params(learner.model), metrics))
    (one, m1), (two, m2) = results
    assert_same_update(one, two)
    assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-6)
    assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4)


def test_several_updates_per_batch_activate_clipping(tiny_model_dir):
    learner = make_learner(tiny_model_dir, updates_per_batch=4, lr=2e-2, epsilon_low=0.01, epsilon_high=0.01)
    metrics = learner.train_step(pitch_batch(learner.processor.tokenizer))
    assert metrics["clip_ratio"] > 0.0


def test_rollout_logprobs_are_the_ratio_denominator(tiny_model_dir):
    """Overlapped rollouts bring the sampling policy's log-probs: equal to the learner's own they
    change nothing; from a policy far off, the ratio is clipped."""
    from dataclasses import replace

    results = {}
    for case in ("none", "same", "far"):
        learner = make_learner(tiny_model_dir, max_grad_norm=1e9)
        batch = pitch_batch(learner.processor.tokenizer)
        if case != "none":
            encoded = encode_questions(learner.processor, batch.questions, batch.waveforms)
            rows = batch_rows(learner, batch, encoded)
            model, features = learner.model, (encoded.input_features, encoded.feature_attention_mask)
            with torch.no_grad():
                own = completion_logprobs(model, rows, audio_embeddings(model, *features))
            own -= 1.0 if case == "far" else 0.0
            behaviour = [own[i, : len(c)].tolist() for i, c in enumerate(batch.completions)]
            batch = replace(batch, behaviour_logprobs=behaviour)
        results[case] = learner.train_step(batch), flat_params(learner.model)
    (none, p_none), (same, p_same), (far, p_far) = results["none"], results["same"], results["far"]
    assert same["loss"] == pytest.approx(none["loss"], abs=1e-5) and same["clip_ratio"] == 0.0
    assert_same_update(p_same, p_none)
    assert far["clip_ratio"] > 0.5 and not torch.allclose(p_far, p_none, atol=1e-5)
    with pytest.raises(ValueError, match="log-probs for"):
        learner.train_step(replace(batch, behaviour_logprobs=[[0.0]] * len(batch.completions)))


def test_lr_warmup_then_cosine(tiny_model_dir):
    learner = make_learner(tiny_model_dir, warmup_steps=1, lr_schedule="cosine", schedule_steps=3)
    batch = pitch_batch(learner.processor.tokenizer, n_questions=1, group=2)
    lrs = [learner.train_step(batch)["lr"] for _ in range(3)]
    assert lrs == pytest.approx([0.5e-3, 1e-3, 0.5e-3])  # the lr each step used


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_world_size_two_equals_world_size_one(tiny_model_dir, ray_cluster, loss_type):
    """Two learner ranks (Ray actors, gloo) on halves of a batch make the same update as one rank;
    for dapo too when one rank's completions are twice as long (the step's tokens over all ranks
    normalise, as in TRL)."""
    ray = ray_cluster
    from dataclasses import replace

    import numpy as np

    from cluster.actors import LearnerActor

    single = make_learner(tiny_model_dir, max_grad_norm=1e9, loss_type=loss_type)
    batch = pitch_batch(single.processor.tokenizer, n_questions=2)
    longer = [c * 2 if q == 1 else c for c, q in zip(batch.completions, batch.question_index, strict=True)]
    batch = replace(batch, completions=longer)
    single.train_step(batch)
    expected = flat_params(single.model).numpy()

    port = free_port()
    config = make_learner_config(max_grad_norm=1e9, loss_type=loss_type)
    ranks = [
        LearnerActor.remote(str(tiny_model_dir), config, rank=r, world_size=2, master_port=port)
        for r in range(2)
    ]
    shards = [batch.shard(r, 2) for r in range(2)]
    metrics = ray.get([actor.train_step.remote(shard) for actor, shard in zip(ranks, shards, strict=True)])
    assert [m["responses"] for m in metrics] == [4, 4]
    params = ray.get([actor.flat_parameters.remote() for actor in ranks])
    assert np.array_equal(params[0], params[1])  # the ranks stay in sync
    assert np.allclose(params[0], expected, atol=1e-6)
    for actor in ranks:
        ray.kill(actor)


@pytest.mark.parametrize("family", ["qwen2-audio", "qwen3-omni"])
def test_zero3_two_ranks_shard_the_reference_complete_the_trace_and_match_one_rank(
    family, ray_cluster, request
):
    """ZeRO-3 over two gloo ranks: the policy and the frozen reference are both sharded (each rank
    holds about half), every forward goes through one root module so DeepSpeed's parameter trace is
    complete after the first step (prefetching on), and the updates equal one unsharded rank's.
    The mixture of experts too: its experts module gathered whole whichever experts a token picks."""
    ray = ray_cluster
    tiny_model_dir = request.getfixturevalue("moe_model_dir" if family == "qwen3-omni" else "tiny_model_dir")
    import numpy as np

    from cluster.actors import LearnerActor

    single = make_learner(tiny_model_dir, max_grad_norm=1e9)
    batch = pitch_batch(single.processor.tokenizer, n_questions=2)
    expected = [single.train_step(batch) for _ in range(2)]
    expected_params = flat_params(single.model).numpy()

    port = free_port()
    config = make_learner_config(max_grad_norm=1e9, zero_stage=3)
    ranks = [
        LearnerActor.remote(str(tiny_model_dir), config, rank=r, world_size=2, master_port=port)
        for r in range(2)
    ]
    held = ray.get([actor.held_bytes.remote() for actor in ranks])
    for h in held:
        assert 0.3 < h["policy"] / h["model"] < 0.7 and 0.3 < h["reference"] / h["model"] < 0.7, h
    shards = [batch.shard(r, 2) for r in range(2)]
    traces = []
    for want in expected:
        metrics = ray.get([a.train_step.remote(s) for a, s in zip(ranks, shards, strict=True)])
        traces.append(ray.get(ranks[0].zero3_traces.remote()))
        assert sum(m["loss"] for m in metrics) / 2 == pytest.approx(want["loss"], abs=1e-5)
        assert metrics[0]["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-3)
    assert traces[0]["policy"] != "complete"  # the first step records the order
    assert traces[1] == {"policy": "complete", "reference": "complete"}, traces
    params = ray.get([actor.flat_parameters.remote() for actor in ranks])
    assert np.array_equal(params[0], params[1])
    # Two Adam steps; ZeRO-3's reduce-scatter sums in another order than one rank's backward, enough
    # to flip the sign of ~0.4% of the tiny model's near-zero gradients (the same in one process).
    expected_params = torch.from_numpy(expected_params)
    assert_same_update(torch.from_numpy(params[0]), expected_params, lr=2e-3, flipped=1e-2)
    for actor in ranks:
        ray.kill(actor)


def test_logprobs_equal_a_plain_hf_forward_with_and_without_prompt_sharing(tiny_model_dir):
    """Audio encoded once per clip, prompts run once per question: same numbers and gradients as
    transformers' own forward with one full row (and one audio copy) per completion."""
    learner = make_learner(tiny_model_dir, beta=0.0)
    model = learner.model
    batch = pitch_batch(learner.processor.tokenizer, n_questions=3, group=4)
    encoded = encode_questions(learner.processor, batch.questions, batch.waveforms)
    rows = batch_rows(learner, batch, encoded)
    weights = torch.randn(rows.completion_ids.shape)

    def ours(share: bool):
        model.zero_grad()
        audio = audio_embeddings(model, encoded.input_features, encoded.feature_attention_mask)
        logp = completion_logprobs(model, rows, audio, share_prompt=share)
        (logp * rows.completion_mask * weights).sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    shared, shared_grads = ours(True)
    full, full_grads = ours(False)
    with torch.no_grad():
        q = rows.question_index
        logits = model(
            input_ids=rows.input_ids,
            attention_mask=rows.attention_mask,
            position_ids=(rows.attention_mask.cumsum(-1) - 1).clamp(min=0),
            input_features=encoded.input_features[q],
            feature_attention_mask=encoded.feature_attention_mask[q],
        ).logits
    start = rows.prompt_length - 1
    plain = torch.log_softmax(logits[:, start : start + rows.completion_ids.size(1)], -1)
    plain = plain.gather(-1, rows.completion_ids.unsqueeze(-1)).squeeze(-1)
    mask = rows.completion_mask.bool()
    torch.testing.assert_close(full[mask], plain[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(shared[mask], plain[mask], atol=1e-4, rtol=1e-4)
    assert len(shared_grads) == len(full_grads) > 0
    for a, b in zip(shared_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)


def test_audio_embeddings_on_cropped_frames_equal_the_full_30s_encoder(tiny_model_dir):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
    from transformers.masking_utils import create_bidirectional_mask

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    extractor = AutoProcessor.from_pretrained(tiny_model_dir).feature_extractor
    for seconds in ([0.7, 2.3], [1.0, 30.0]):  # short clips (cropped), and a full-length one
        waves = [tone(300.0 * (i + 1), s) for i, s in enumerate(seconds)]
        out = extractor(waves, sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="pt")
        features, mask = out.input_features, out.attention_mask
        tower = model.model.audio_tower
        with torch.no_grad():
            ours = audio_embeddings(model, features, mask)
            lengths, out_lengths = tower._get_feat_extract_output_lengths(mask.sum(-1))
            keep = (torch.arange(1500)[None] < lengths[:, None]).long()
            dummy = torch.zeros(len(waves), 1500, 1)
            attention = create_bidirectional_mask(
                config=tower.config, inputs_embeds=dummy, attention_mask=keep
            )
            encoded = tower(features, attention_mask=attention).last_hidden_state
            full = model.model.multi_modal_projector(encoded)
        for i, clip in enumerate(ours):
            torch.testing.assert_close(clip, full[i, : int(out_lengths[i])], atol=1e-5, rtol=1e-5)


def test_joined_no_grad_passes_equal_one_pass_per_micro_batch(tiny_model_dir):
    """The reference's and the old policy's log-probs from one pass over all micro-batches (more
    left and right padding) equal one pass per micro-batch, cut to each micro-batch's rows."""
    learner = make_learner(tiny_model_dir, beta=0.04, updates_per_batch=2, micro_batch_questions=1)
    batch = pitch_batch(learner.processor.tokenizer, n_questions=3, group=4)
    batch.waveforms[1] = tone(300.0, 2.5)  # a longer clip: a longer prompt, more left padding
    encoded = learner.encode(batch)
    micro = learner.micro_batches(batch, encoded)
    values = {}
    for size in (1, 3):
        learner.no_grad_questions = size
        values[size] = learner.reference_logprobs(batch, micro, encoded) + learner.old_logprobs(
            batch, micro, encoded
        )
    assert len(micro) == 3 and len(values[3]) == 6
    for m, one, joined in zip(micro * 2, values[1], values[3], strict=True):
        mask = m.rows.completion_mask.bool()
        assert one.shape == joined.shape == mask.shape
        torch.testing.assert_close(joined[mask], one[mask], atol=1e-5, rtol=0)


def test_fused_adamw_takes_the_same_steps():
    """The optimizer the learner builds on CUDA (fused) takes the updates of the default one."""
    import copy

    from learner.config import OptimizerConfig
    from learner.deepspeed_setup import adamw

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    fused = copy.deepcopy(plain)
    settings = OptimizerConfig(lr=1e-2, weight_decay=0.01)
    optimizers = [adamw(plain.parameters(), settings), adamw(fused.parameters(), settings, fused=True)]
    assert optimizers[1].defaults["fused"] is True
    for _ in range(5):
        x = torch.randn(8, 16)
        for model, optimizer in zip((plain, fused), optimizers, strict=True):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
