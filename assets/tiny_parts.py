"""The parts every tiny model family shares: the sizes, the byte-level BPE tokenizer trained on the
project's own prompt vocabulary (every special token Qwen2-Audio has), the 128-bin Whisper feature
extractor, the Qwen2 decoder and Whisper-style encoder configs, the chat generation config, and the
widened audio weights that let a random encoder tell sounds apart. Imports no family's builder: the
builders (`tiny_<family>.py`) import these, and `tiny_model.py` picks a builder per family."""

from __future__ import annotations

import json

import torch
from tokenizers import Tokenizer
from transformers import GenerationConfig, Qwen2Tokenizer, WhisperFeatureExtractor

from assets.synthetic import TASKS
from assets.warm_start import warm_start_target
from rollout.audio import SAMPLE_RATE
from rollout.prompt import prompt_text

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_bos|>",
    "<|AUDIO|>",
    "<|audio_eos|>",
]

SIZES = {
    "tiny": dict(
        vocab=640,
        audio=dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128),
        text=dict(
            hidden_size=128,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        # Mixture-of-experts families (Qwen3-Omni) replace the MLP with these experts.
        experts=dict(num_experts=4, moe_intermediate_size=64, num_experts_per_tok=2),
    ),
    "small": dict(
        vocab=4096,
        audio=dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
        text=dict(
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
        ),
        experts=dict(num_experts=8, moe_intermediate_size=256, num_experts_per_tok=2),
    ),
    # About 100M parameters (400 MB in float32): benchmarks only (weight transfer at a few hundred MB).
    "medium": dict(
        vocab=4096,
        audio=dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
        text=dict(
            hidden_size=1024,
            intermediate_size=2048,
            num_hidden_layers=10,
            num_attention_heads=16,
            num_key_value_heads=4,
        ),
        experts=dict(num_experts=8, moe_intermediate_size=512, num_experts_per_tok=2),
    ),
}

# A few generic audio-QA words beyond the synthetic tasks (MMAU-style questions tokenise shorter).
_GENERAL_TEXT = (
    "What is the main sound source in the audio? Which instrument is playing? What emotion does the "
    "speaker convey? How many people are speaking? What genre is the music? Identify the sound event. "
    "Is the speaker male or female? What is the tempo of the music? Where was this recorded? "
    "The answer is in the audio clip. I think the correct option is"
)


def tokenizer_corpus() -> list[str]:
    """Text the BPE tokenizer is trained on: every prompt and answer the project renders."""
    corpus = [_GENERAL_TEXT, "system\nYou are a helpful assistant.\nuser\nAudio 1: \nassistant\n"]
    for task in TASKS.values():
        choices = task.classes
        for thinking in (False, True):
            corpus.append(prompt_text(task.question, choices, thinking=thinking))
        for choice in choices:
            corpus += [warm_start_target(choice, thinking=False), warm_start_target(choice, thinking=True)]
    return corpus * 20  # repetition lets the frequent prompt words merge into single tokens


def build_tokenizer(
    vocab_size: int, named_tokens: dict[str, str] | None = None, extra_corpus: list[str] | None = None
) -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen2's pre-tokenisation, trained on `tokenizer_corpus()` (and
    `extra_corpus`: the tiny CLAP adds its captions' words).

    `named_tokens` ({"image_token": "<|IMAGE|>", ...}) adds special tokens that the tokenizer
    also exposes by name (processors such as Qwen2.5-Omni's read `tokenizer.image_token`)."""
    named_tokens = named_tokens or {}
    specials = SPECIAL_TOKENS + [t for t in named_tokens.values() if t not in SPECIAL_TOKENS]
    # An empty Qwen2 tokenizer carries Qwen2's pre-tokeniser and decoder; train its vocabulary anew.
    base = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[])
    trained = base.train_new_from_iterator(
        tokenizer_corpus() + (extra_corpus or []), vocab_size=vocab_size, new_special_tokens=specials
    )
    backend: Tokenizer = trained.backend_tokenizer
    tokenizer = Qwen2Tokenizer(
        vocab=backend.get_vocab(),
        merges=[
            tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in _merges_of(backend)
        ],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        **named_tokens,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tokenizer  # each family's builder sets its chat template


def _merges_of(backend: Tokenizer) -> list:
    return json.loads(backend.to_str())["model"]["merges"]


def whisper_features() -> WhisperFeatureExtractor:
    """128 mel bins at 16 kHz in 30 s windows, as every supported family's processor has."""
    return WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30, n_fft=400
    )


def encoder_config(spec: dict, model_type: str) -> dict:
    return dict(model_type=model_type, num_mel_bins=128, max_source_positions=1500, **spec["audio"])


def decoder_config(spec: dict, tokenizer: Qwen2Tokenizer) -> dict:
    """The Qwen2 decoder every supported family uses, at the size `spec` names."""
    return dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        rope_theta=1e6,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        **spec["text"],
    )


def omni_processor(processor_class: type, tokenizer: Qwen2Tokenizer, template: str, patch_size: int = 14):
    """An Omni family's processor without torchvision: the PIL image processor and the audio-only
    video stand-in at the family's vision patch, the shared feature extractor, its chat template."""
    from families import omni_compat

    omni_compat.install()
    from transformers import Qwen2VLImageProcessorPil

    tokenizer.chat_template = template
    return processor_class(
        image_processor=Qwen2VLImageProcessorPil(patch_size=patch_size),
        video_processor=omni_compat.AudioOnlyVideoProcessor(patch_size=patch_size),
        feature_extractor=whisper_features(),
        tokenizer=tokenizer,
        chat_template=template,
    )


def chat_generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Generation ends at <|im_end|> (or padding), greedy unless asked."""
    return GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


def widen_audio_weights(model: torch.nn.Module, seed: int) -> None:
    """A randomly initialised Whisper encoder maps all sines to nearly the same feature (cosine
    0.999, STACK.md), so nothing can learn from the audio. Wider weights separate the classes."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            audio = "audio_tower" in name or "multi_modal_projector" in name
            if audio and isinstance(module, torch.nn.Linear | torch.nn.Conv1d):
                module.weight.normal_(0.0, 0.1, generator=generator)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
