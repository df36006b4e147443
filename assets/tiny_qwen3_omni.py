"""A tiny Qwen3-Omni thinker (mixture of experts), built offline like the others: the shared
tokenizer plus Qwen3-Omni's named audio and vision tokens, its chat template's audio rendering,
its processor with the shared 30 s feature extractor, and the real thinker at sizes vLLM's CPU
kernels take (attention head_dim 32; hidden and expert sizes multiples of 32). Written as the
published full omni checkpoint (`families/qwen3_omni.py`): per-expert weights under `thinker.`."""

from __future__ import annotations

import torch
from transformers import (
    Qwen2Tokenizer,
    Qwen3OmniMoeProcessor,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
)

from assets.tiny_parts import chat_generation_config, decoder_config, encoder_config, omni_processor
from families.qwen3_omni import NAMED_TOKENS as NAMED

# Qwen3-Omni's rendering of an audio item (no default system message, as its template has none).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "<|audio_start|><|audio_pad|><|audio_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen3OmniMoeProcessor:
    return omni_processor(Qwen3OmniMoeProcessor, tokenizer, CHAT_TEMPLATE, patch_size=16)


def build_model(spec: dict, tokenizer: Qwen2Tokenizer, seed: int) -> torch.nn.Module:
    """The thinker (`Qwen3OmniMoeThinkerForConditionalGeneration`) at the sizes `spec` names."""
    token = tokenizer.convert_tokens_to_ids
    text = decoder_config(spec, tokenizer) | {"model_type": "qwen3_omni_moe_text"}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    # Interleaved M-RoPE's time/height/width sections of head_dim/2 ([24, 20, 20] of 64 published).
    sections = [half * 3 // 8, half * 5 // 16, half - half * 3 // 8 - half * 5 // 16]
    theta = text.pop("rope_theta")
    text |= {
        "head_dim": head_dim,
        **spec["experts"],
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": theta,
            "mrope_section": sections,
            "interleaved": True,
        },
    }
    hidden = text["hidden_size"]
    audio = encoder_config(spec, "qwen3_omni_moe_audio_encoder")
    audio |= {"output_dim": hidden, "downsample_hidden_size": 32}
    config = Qwen3OmniMoeThinkerConfig(
        audio_config=audio,
        # vLLM builds the vision tower's shell even with no image allowed, from these fields.
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden,
            deepstack_visual_indexes=[0],
            num_position_embeddings=16,
            image_size=64,
            apply_vit_abs_pos_embed=True,
        ),
        text_config=text,
        audio_token_id=token(NAMED["audio_token"]),
        image_token_id=token(NAMED["image_token"]),
        video_token_id=token(NAMED["video_token"]),
        audio_start_token_id=token(NAMED["audio_bos_token"]),
        audio_end_token_id=token(NAMED["audio_eos_token"]),
        vision_start_token_id=token(NAMED["vision_bos_token"]),
        vision_end_token_id=token(NAMED["vision_eos_token"]),
    )
    torch.manual_seed(seed)
    model = Qwen3OmniMoeThinkerForConditionalGeneration(config).eval()
    model.generation_config = chat_generation_config(tokenizer)
    # The encoder's 2-D convolutional front end, at its random initialisation, maps every tone to
    # the same features (cosine 1.0 between a 300 Hz and a 2 kHz tone's mean embedding); at this
    # scale they differ (0.73-0.83; two low tones 0.92). The other families' encoders, after
    # `widen_audio_weights`, separate them more (Qwen2.5-Omni's: 0.28-0.55).
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for module in model.audio_tower.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0.0, 0.3, generator=generator)
    return model
