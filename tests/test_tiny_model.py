"""`make-tiny` checkpoints: deterministic, published key layout, load in HF and vLLM alike."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CHOICES, QUESTION, assert_same_greedy, clips, fp32_llm, hf_greedy, vllm_greedy
from safetensors import safe_open

from assets.tiny_model import make_tiny, parameter_count
from rollout.audio import SAMPLE_RATE
from rollout.prompt import render_prompt


def test_tiny_is_well_under_a_million_parameters(tiny_model_dir):
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir)
    assert 200_000 < parameter_count(model) < 800_000


def test_same_seed_same_files_other_seed_other_weights(tmp_path, tiny_model_dir):
    again = make_tiny(tmp_path / "again", seed=0)
    other = make_tiny(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()


def test_refuses_to_overwrite_a_non_empty_folder(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        make_tiny(tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_checkpoint_uses_the_published_key_layout(tiny_model_dir):
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    prefixes = ("audio_tower.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head.")
    assert all(k.startswith(prefixes) for k in keys), [k for k in keys if not k.startswith(prefixes)]
    assert not any(k.startswith("language_model.model.model.") for k in keys)  # transformers 5.19 bug
    assert "language_model.lm_head.weight" in keys and "language_model.model.embed_tokens.weight" in keys


def test_tokenizer_and_processor_carry_qwen2_audio_tokens(tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tokenizer = processor.tokenizer
    for token in [
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|audio_bos|>",
        "<|AUDIO|>",
        "<|audio_eos|>",
    ]:
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert len(ids) == 1, token
    assert config["audio_token_index"] == tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert processor.feature_extractor.feature_size == 128
    # Prompt words the task uses are single tokens, so completions stay short.
    for word in [" high", " low", " answer"]:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    # A 2 s clip expands to about 50 audio tokens.
    text = render_prompt(processor, QUESTION, CHOICES)
    inputs = processor(text=text, audio=clips()[0], sampling_rate=SAMPLE_RATE, return_tensors="pt")
    n_audio = int((inputs.input_ids == config["audio_token_index"]).sum())
    assert 45 <= n_audio <= 55


def test_loads_like_the_r1_aqa_model_card_in_bf16(tiny_model_dir):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    text = render_prompt(processor, QUESTION, CHOICES)
    inputs = processor(
        text=text, audio=clips()[0], sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
    )
    generated = model.generate(**inputs, max_new_tokens=8)
    response = processor.batch_decode(
        generated[:, inputs.input_ids.size(1) :], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    assert len(response) == 1 and isinstance(response[0], str)


@pytest.mark.slow
def test_tiny_greedy_equal_in_hf_and_vllm(tiny_model_dir, tiny_vllm):
    hf = hf_greedy(tiny_model_dir)
    assert len({tuple(ids) for ids in hf}) >= 1 and all(len(ids) > 0 for ids in hf)
    assert_same_greedy(hf, vllm_greedy(tiny_vllm, tiny_model_dir))


@pytest.mark.slow
def test_small_model_size_and_greedy_equal_in_hf_and_vllm(tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    model_dir = make_tiny(tmp_path / "small", size="small", seed=0)
    count = parameter_count(Qwen2AudioForConditionalGeneration.from_pretrained(model_dir))
    assert 30_000_000 <= count <= 60_000_000
    hf = hf_greedy(model_dir, max_new_tokens=12)
    llm = fp32_llm(model_dir)
    try:
        assert_same_greedy(hf, vllm_greedy(llm, model_dir, max_new_tokens=12))
    finally:
        llm.llm_engine.engine_core.shutdown()
