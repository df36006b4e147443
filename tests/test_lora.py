"""LoRA in the learner (peft): only adapters train, the reference is the base with adapters off
(no second copy), and checkpoints and rollout engines get merged weights under the published names."""

from __future__ import annotations

import copy

import torch
from helpers import batch_rows, make_learner, pitch_batch

from families import adapter_for
from learner.config import LoraSettings
from learner.hf_format import published_state
from learner.lora import adapters_disabled, lora_layers
from learner.policy import audio_embeddings, completion_logprobs, encode_questions


def logprobs(model, learner, batch) -> torch.Tensor:
    encoded = encode_questions(learner.processor, batch.questions, batch.waveforms)
    rows = batch_rows(learner, batch, encoded)
    with torch.no_grad():
        audio = audio_embeddings(model, encoded.input_features, encoded.feature_attention_mask)
        return completion_logprobs(model, rows, audio)


def test_lora_trains_adapters_only_against_the_base_as_reference(tiny_model_dir):
    from transformers import Qwen2AudioForConditionalGeneration

    learner = make_learner(tiny_model_dir, lora=LoraSettings(rank=4, alpha=8.0))
    assert learner.reference is None  # no second model
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    batch = pitch_batch(learner.processor.tokenizer)
    first, second = learner.train_step(batch), learner.train_step(batch)
    changed = [n for n, p in learner.model.named_parameters() if not torch.equal(before[n], p)]
    assert changed and all(".lora_" in n for n in changed)
    assert first["kl"] == 0.0 and second["kl"] > 0.0  # the policy left the base it is tied to

    base = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with adapters_disabled(learner.model):
        assert torch.allclose(
            logprobs(learner.model, learner, batch), logprobs(base, learner, batch), atol=1e-5
        )
    assert not torch.allclose(
        logprobs(learner.model, learner, batch), logprobs(base, learner, batch), atol=1e-5
    )

    # Published weights: peft's own merge of the same adapters, under the base model's names.
    merged = copy.deepcopy(learner.model)
    for layer in lora_layers(merged).values():
        layer.merge()
    expected = {
        adapter_for(merged).published_name(name.replace(".base_layer.", ".")): t
        for name, t in merged.state_dict().items()
        if ".lora_" not in name
    }
    streamed = dict(learner.gathered_weights())
    assert streamed.keys() == dict(published_state(base)).keys() == expected.keys()
    for name, tensor in streamed.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
