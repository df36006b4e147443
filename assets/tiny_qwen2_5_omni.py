"""A tiny Qwen2.5-Omni thinker, built offline like the tiny Qwen2-Audio (`tiny_model.py`): the same
tokenizer plus Omni's vision tokens (named, as its processor reads them), Omni's chat template (no
"Audio 1:" prefix), its processor with the shared 30 s feature extractor (the published one pads to
300 s; a tiny model's positions stop at 4096) and the real thinker at the tiny sizes, vision tower
included (a single small block: vLLM skips it, transformers builds it)."""

from __future__ import annotations

import torch
from transformers import (
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2Tokenizer,
)

from assets.tiny_parts import chat_generation_config, decoder_config, encoder_config, omni_processor
from families.qwen2_5_omni import NAMED_TOKENS

# Qwen2.5-Omni's rendering of an audio item: the three tokens, no prefix, no newline after.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The tokens the Omni processor reads by name, and <|vision_pad|> (in the published vocabulary).
NAMED = NAMED_TOKENS | {"vision_pad_token": "<|vision_pad|>"}


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2_5OmniProcessor:
    return omni_processor(Qwen2_5OmniProcessor, tokenizer, CHAT_TEMPLATE)


def build_model(spec: dict, tokenizer: Qwen2Tokenizer, seed: int) -> torch.nn.Module:
    """The thinker (`Qwen2_5OmniThinkerForConditionalGeneration`) at the sizes `spec` names."""
    token = tokenizer.convert_tokens_to_ids
    text = decoder_config(spec, tokenizer) | {"model_type": "qwen2_5_omni_text"}
    half = text["hidden_size"] // text["num_attention_heads"] // 2
    # M-RoPE's time/height/width sections split head_dim/2 as published ([16, 24, 24] of 64).
    sections = [half // 4, (half - half // 4) // 2, (half - half // 4) // 2]
    theta = text.pop("rope_theta")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "mrope_section": sections}
    hidden = text["hidden_size"]
    config = Qwen2_5OmniThinkerConfig(
        audio_config=encoder_config(spec, "qwen2_5_omni_audio_encoder") | {"output_dim": hidden},
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden,
            fullatt_block_indexes=[0],
        ),
        text_config=text,
        audio_token_index=token("<|AUDIO|>"),
        image_token_index=token("<|IMAGE|>"),
        video_token_index=token("<|VIDEO|>"),
        audio_start_token_id=token("<|audio_bos|>"),
        audio_end_token_id=token("<|audio_eos|>"),
        vision_start_token_id=token("<|vision_bos|>"),
        vision_end_token_id=token("<|vision_eos|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    model.generation_config = chat_generation_config(tokenizer)
    return model
