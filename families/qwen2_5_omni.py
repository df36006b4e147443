"""Qwen2.5-Omni (Qwen/Qwen2.5-Omni-7B, -3B), its thinker: the part that reads audio and writes text.

We train `Qwen2_5OmniThinkerForConditionalGeneration` (decoder `model`, head `lm_head`, encoder
`audio_tower` with its projection inside; the vision tower is carried but never used). Published
checkpoints are the full omni model: the thinker's weights under `thinker.` (talker and token2wav
beside it) and a `qwen2_5_omni` config holding the thinker's. vLLM registers only that full class, so
our checkpoints are written that way too (`enable_audio_output: false`, no talker), and weight
updates carry `thinker.` names (vLLM's Omni model maps them to its own).

The encoder drops a clip's padded frames itself and attends within 2 s chunks, so there is nothing to
crop; its output is flat (all clips' tokens in one row), split here per clip. The text model takes
2-D position ids and repeats them over M-RoPE's three rows, which for audio and text is what
the model computes itself (vLLM agrees), so the learner's explicit positions stand. Without
torchvision its processor needs `families/omni_compat.py`.
"""

from __future__ import annotations

import torch

from families.base import ModelAdapter

NAMED_TOKENS = {  # the tokenizer attributes the Omni processor reads
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}


class Qwen2_5Omni(ModelAdapter):  # noqa: N801 (the model's own name)
    family = "qwen2.5-omni"
    model_types = ("qwen2_5_omni", "qwen2_5_omni_thinker")
    processor_classes = ("Qwen2_5OmniProcessor",)
    published_prefixes = (("", "thinker."),)
    forbidden_tokens = (*NAMED_TOKENS.values(), "<|vision_pad|>", "<|im_start|>")
    # Zero images and videos: vLLM neither builds the vision tower nor loads its weights.
    vllm_mm_limits = {"audio": 1, "image": 0, "video": 0}
    unused_modules = ("visual",)
    lora_language = r"(.*\.)?model\.layers\.\d+\.(self_attn|mlp)\.({})"
    lora_audio = r".*audio_tower\.(layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)|proj)"

    def install_runtime_support(self) -> None:
        from families import omni_compat  # imports transformers' image stack: only when needed

        omni_compat.install()

    def model_class(self) -> type:
        self.install_runtime_support()
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        return Qwen2_5OmniThinkerForConditionalGeneration

    def trained_config(self, config):
        return getattr(config, "thinker_config", config)  # a full omni config holds the thinker's

    def load_processor(self, path):
        self.install_runtime_support()
        return super().load_processor(path)

    def decoder(self, model) -> torch.nn.Module:
        return model.model

    def audio_embeddings(self, model, features, mask):
        tower = model.audio_tower
        mask = mask.to(tower.device)
        flat = model.get_audio_features(
            features.to(tower.device, dtype=tower.conv1.weight.dtype), feature_attention_mask=mask
        ).last_hidden_state
        _, lengths = tower._get_feat_extract_output_lengths(mask.sum(-1))
        return list(flat.split(lengths.tolist()))

    def saved_config(self, model):
        from transformers import Qwen2_5OmniConfig

        config = Qwen2_5OmniConfig(thinker_config=model.config.to_dict(), enable_audio_output=False)
        config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
        return config
