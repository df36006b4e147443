"""A tiny Qwen2-Audio checkpoint's family parts: Qwen2-Audio-7B-Instruct's chat template, its
processor (the shared tokenizer and 30 s feature extractor) and the real architecture at the tiny
sizes (`tiny_parts.py` holds what the families share)."""

from __future__ import annotations

import torch
from transformers import (
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Tokenizer,
)

from assets.tiny_parts import chat_generation_config, decoder_config, encoder_config, whisper_features

# Qwen2-Audio-7B-Instruct's chat template.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2AudioProcessor:
    tokenizer.chat_template = CHAT_TEMPLATE
    return Qwen2AudioProcessor(
        feature_extractor=whisper_features(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def build_model(spec: dict, tokenizer: Qwen2Tokenizer, seed: int) -> Qwen2AudioForConditionalGeneration:
    config = Qwen2AudioConfig(
        audio_config=encoder_config(spec, "qwen2_audio_encoder"),
        text_config=decoder_config(spec, tokenizer),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config = chat_generation_config(tokenizer)
    return model
