"""What differs between the audio language models we train, as one small adapter per family.

An adapter answers, for its family: which transformers class to load, where the language model,
its embeddings and its head sit, how the processor's audio becomes embeddings (and under which
feature-mask key), the published checkpoint names (for HF folders and for vLLM), the tokens a
policy must never sample, vLLM's multimodal limits and the modules LoRA may target. The learner,
rollout, weight transfer, checkpoints, evaluation and serving call these and hold no
family-specific branch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class EncodedClip:
    """One prompt through the processor: its ids (audio placeholders expanded) and the mel features
    of its clip, one row per encoder window (one window unless the family splits long clips)."""

    prompt_ids: list[int]
    features: torch.Tensor  # [windows, mels, frames]
    feature_mask: torch.Tensor  # [windows, frames]


class ModelAdapter:
    """The Qwen2-Audio-like defaults; a family overrides what differs."""

    family: str = ""
    model_types: tuple[str, ...] = ()  # config.json `model_type` values this adapter serves
    processor_classes: tuple[str, ...] = ()  # processor class names it serves
    feature_mask_key: str = "feature_attention_mask"
    # in-memory name prefix -> published checkpoint prefix, first match wins
    published_prefixes: tuple[tuple[str, str], ...] = ()
    # Sampled back into a forward these break the audio merge, or they mean another modality.
    forbidden_tokens: tuple[str, ...] = ("<|im_start|>",)
    vllm_mm_limits: dict[str, Any] = {"audio": 1}
    lora_language: str = r".*language_model\.layers\.\d+\.(self_attn|mlp)\.({})"  # {}: target names
    lora_audio: str = ""
    # Modules the audio task never runs (a vision tower): frozen, kept in checkpoints, not sent.
    unused_modules: tuple[str, ...] = ()

    # -- loading ---------------------------------------------------------------------------------
    def install_runtime_support(self) -> None:
        """Process-wide fixes this family's libraries need before a model or processor loads
        (none here; `families.install_runtime_support` runs every family's)."""

    def model_class(self) -> type:
        raise NotImplementedError

    def load(self, path: str, dtype: torch.dtype) -> torch.nn.Module:
        return self.model_class().from_pretrained(path, dtype=dtype)

    def freeze_unused(self, model: torch.nn.Module) -> None:
        for name in self.unused_modules:
            model.get_submodule(name).requires_grad_(False)

    def trained_config(self, config: Any) -> Any:
        """The config of the part we train, from a checkpoint's config (the whole model here)."""
        return config

    def load_processor(self, path: str) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    # -- where things sit ------------------------------------------------------------------------
    def decoder(self, model) -> torch.nn.Module:
        """The language model's decoder stack (takes inputs_embeds, returns hidden states)."""
        return model.model.language_model

    def audio_token_id(self, model) -> int:
        return model.config.audio_token_id

    def zero3_external_parameters(self, model) -> list[tuple[torch.nn.Module, torch.nn.Parameter]]:
        """Parameters read outside their module's forward (ZeRO-3 must be told who uses them)."""
        return []

    # -- audio -----------------------------------------------------------------------------------
    def clip_tokens(self, audio_config) -> int:
        """Prompt tokens of a 30 s clip (the planner's unit): Whisper-like encoders pool by 2."""
        return audio_config.max_source_positions // 2

    def encode(self, processor, text: str, wave: np.ndarray, sample_rate: int) -> EncodedClip:
        out = processor(text=text, audio=wave, sampling_rate=sample_rate, return_tensors="pt")
        return EncodedClip(out.input_ids[0].tolist(), out.input_features, out[self.feature_mask_key])

    def batch_inputs(self, processor, texts: list[str], waves: list[np.ndarray], sample_rate: int) -> Any:
        """Processor outputs for a left-padded batch (transformers' `generate`)."""
        processor.tokenizer.padding_side = "left"
        return processor(
            text=texts, audio=waves, sampling_rate=sample_rate, return_tensors="pt", padding=True
        )

    def audio_embeddings(self, model, features: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Projected audio embeddings per window row, cropped to its length ([n_i, hidden] each)."""
        raise NotImplementedError

    # -- names -----------------------------------------------------------------------------------
    def published_name(self, name: str) -> str:
        """An in-memory parameter name -> its key in published checkpoints (what vLLM loads)."""
        for memory_prefix, published_prefix in self.published_prefixes:
            if name.startswith(memory_prefix):
                return published_prefix + name[len(memory_prefix) :]
        return name

    def checkpoint_tensors(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """A published (name, tensor) as checkpoint files store it: itself, unless the family
        keeps a tensor fused in memory that published files store in parts (experts)."""
        yield name, tensor

    def saved_config(self, model) -> Any:
        """The config a checkpoint folder carries (its `architectures` pick vLLM's class)."""
        model.config.architectures = [type(model).__name__]
        return model.config

    def lora_pattern(self, target_modules: list[str], audio: bool) -> str:
        language = self.lora_language.format("|".join(target_modules))
        return f"{language}|{self.lora_audio}" if audio and self.lora_audio else language
