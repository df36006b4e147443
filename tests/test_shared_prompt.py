"""Prompt sharing (`learner/shared_prompt.py`): each question's prompt runs once for all of its
completions, with gradient checkpointing off (a key/value cache) and on (packed rows, a block
mask), and gives the numbers and gradients of one full row per completion."""

from __future__ import annotations

import pytest
import torch
from helpers import tone

from families import adapter_for, load_processor
from learner.policy import audio_embeddings, build_rows, completion_logprobs, encode_questions

# Prompts of different lengths (left padding), groups of 3, 1 and 4 completions.
QUESTIONS = [
    ("Is the tone high or low?", ["high", "low"]),
    ("Which sound is in the clip?", ["a dog", "a car", "rain", "speech", "music"]),
    ("Is the tone high or low?", ["low", "high"]),
]
GROUPS = [3, 1, 4]


@pytest.fixture(scope="module", params=["qwen2-audio", "audioflamingo3", "qwen2.5-omni", "qwen3-omni"])
def scored(request, tiny_model_dir, tmp_path_factory):
    """Each family's tiny model in float32 (training mode), its rows and audio features."""
    from assets.tiny_model import make_tiny

    folder = tiny_model_dir
    if request.param != "qwen2-audio":
        folder = make_tiny(tmp_path_factory.mktemp("models") / request.param, family=request.param)
    model = adapter_for(folder).load(str(folder), torch.float32).train()
    processor = load_processor(folder)
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    waves = [tone(300.0, 1.0), tone(2000.0, 0.6), tone(700.0, 1.4)]
    encoded = encode_questions(processor, QUESTIONS, waves)
    texts = ["<answer>high</answer>", "<answer>low", "high high high low", "<answer>a dog</answer>"]
    completions, index = [], []
    for q, group in enumerate(GROUPS):
        for g in range(group):
            ids = tokenizer(texts[(q + g) % len(texts)], add_special_tokens=False).input_ids
            completions.append(ids + [end] if g % 2 == 0 else ids)
            index.append(q)
    completions[1] = completions[1][:2] + [end] + completions[1][:3]  # ends early, tokens after its end
    rows = build_rows(encoded.prompt_ids, completions, index, tokenizer.pad_token_id, [end])
    assert len(set(map(len, encoded.prompt_ids))) > 1 and rows.completion_mask[1].sum() == 3
    return model, rows, encoded


def logprobs_and_grads(model, rows, encoded, share: bool, checkpointing: bool, weights: torch.Tensor):
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.zero_grad()
    audio = audio_embeddings(model, encoded.input_features, encoded.feature_attention_mask)
    logp = completion_logprobs(model, rows, audio, share_prompt=share)
    (logp * rows.completion_mask * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.gradient_checkpointing_disable()
    return logp.detach(), grads


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prompt_equals_full_rows(scored, checkpointing):
    model, rows, encoded = scored
    weights = torch.randn(rows.completion_ids.shape, generator=torch.Generator().manual_seed(0))
    full, full_grads = logprobs_and_grads(model, rows, encoded, False, checkpointing, weights)
    shared, shared_grads = logprobs_and_grads(model, rows, encoded, True, checkpointing, weights)
    mask = rows.completion_mask.bool()
    torch.testing.assert_close(shared[mask], full[mask], atol=1e-5, rtol=0)
    assert shared_grads.keys() == full_grads.keys() and len(full_grads) > 10
    for name, grad in full_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # a reference (no checkpointing of its own) told to take the same way
        audio = audio_embeddings(model, encoded.input_features, encoded.feature_attention_mask)
        no_grad = completion_logprobs(model, rows, audio, share_prompt=True, packed=checkpointing)
    torch.testing.assert_close(no_grad, shared, atol=0, rtol=0)


def test_checkpointed_decoder_sees_each_prompt_once_per_question(scored):
    """Tokens through the first decoder layer: one prompt per question plus each completion in the
    forward pass, the same again in the recomputation (with full rows: a prompt per completion)."""
    model, rows, encoded = scored
    layer = adapter_for(model).decoder(model).layers[0]
    seen = []

    def count(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).shape[:2])

    hook = layer.register_forward_pre_hook(count, with_kwargs=True)
    try:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        audio = audio_embeddings(model, encoded.input_features, encoded.feature_attention_mask)
        logp = completion_logprobs(model, rows, audio, share_prompt=True)
        forward = sum(b * t for b, t in seen)
        logp.sum().backward()
        recomputed = sum(b * t for b, t in seen) - forward
    finally:
        hook.remove()
        model.gradient_checkpointing_disable()
        model.zero_grad()
    prompt, completion = rows.prompt_length, rows.completion_ids.size(1)
    packed = len(GROUPS) * -(-(prompt + max(GROUPS) * completion) // 16) * 16  # a row per question
    assert forward == packed and recomputed == packed
    assert packed < sum(GROUPS) * (prompt + completion)  # what full rows would run
