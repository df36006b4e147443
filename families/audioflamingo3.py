"""Audio Flamingo 3 (nvidia/audio-flamingo-3-hf): a Whisper-like encoder, a two-layer projector and
a Qwen2 decoder, laid out in memory and in checkpoints as Qwen2-Audio is (transformers 5.19 maps
its names through Qwen2-Audio's rules, save bug included; vLLM loads the published layout).

What differs: the placeholder is `<sound>`; the processor cuts a clip into 30 s windows (one
feature row each, at most `max_audio_len` seconds) and names its mask `input_features_mask`; the
chat template puts the sound before the text.
"""

from __future__ import annotations

from families.base import EncodedClip
from families.qwen2_audio import Qwen2Audio


class AudioFlamingo3(Qwen2Audio):
    """Qwen2-Audio's layout, encoder path and names; its own placeholder, processor and projector."""

    family = "audioflamingo3"
    model_types = ("audioflamingo3",)
    processor_classes = ("AudioFlamingo3Processor",)
    feature_mask_key = "input_features_mask"
    forbidden_tokens = ("<sound>", "<|im_start|>")
    lora_audio = Qwen2Audio.lora_audio.replace(
        r"multi_modal_projector\.linear", r"multi_modal_projector\.linear_[12]"
    )

    def model_class(self) -> type:
        from transformers import AudioFlamingo3ForConditionalGeneration

        return AudioFlamingo3ForConditionalGeneration

    def encode(self, processor, text, wave, sample_rate):
        # Lists in, 1:1 (the processor's rule); it only returns torch tensors.
        out = processor(text=[text], audio=[wave], sampling_rate=sample_rate)
        return EncodedClip(out.input_ids[0].tolist(), out.input_features, out[self.feature_mask_key])

    def batch_inputs(self, processor, texts, waves, sample_rate):
        # Its defaults pad text on the left; `padding=True` would also cut the 30 s feature windows.
        return processor(text=texts, audio=waves, sampling_rate=sample_rate)
