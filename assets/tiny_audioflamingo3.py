"""A tiny Audio Flamingo 3 checkpoint, built offline like the tiny Qwen2-Audio (`tiny_model.py`):
the same tokenizer plus AF3's `<sound>` placeholder, AF3's chat template (the sound before the
text), its processor (30 s windows; `max_audio_len` 60 s, so vLLM's start-up profile is two
windows, not ten minutes) and the real AF3 architecture at the tiny sizes."""

from __future__ import annotations

import torch
from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3ForConditionalGeneration,
    AudioFlamingo3Processor,
    Qwen2Tokenizer,
)

from assets.tiny_parts import chat_generation_config, decoder_config, encoder_config, whisper_features

SOUND = "<sound>"
MAX_AUDIO_SECONDS = 60

# nvidia/audio-flamingo-3-hf's rendering: system turn, then the user's sound before all its text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'audio' or 'audio' in content %}"
    "<sound>{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_processor(tokenizer: Qwen2Tokenizer) -> AudioFlamingo3Processor:
    tokenizer.add_tokens([SOUND], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return AudioFlamingo3Processor(
        feature_extractor=whisper_features(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        audio_token=SOUND,
        max_audio_len=MAX_AUDIO_SECONDS,
    )


def build_model(spec: dict, tokenizer: Qwen2Tokenizer, seed: int) -> AudioFlamingo3ForConditionalGeneration:
    config = AudioFlamingo3Config(
        audio_config=encoder_config(spec, "audioflamingo3_encoder"),
        text_config=decoder_config(spec, tokenizer),
        audio_token_id=tokenizer.convert_tokens_to_ids(SOUND),
    )
    torch.manual_seed(seed)
    model = AudioFlamingo3ForConditionalGeneration(config).eval()
    model.generation_config = chat_generation_config(tokenizer)
    return model
