"""Qwen3-Omni (Qwen/Qwen3-Omni-30B-A3B-Instruct, -Thinking, -Captioner), its thinker: the first
mixture-of-experts family.

We train `Qwen3OmniMoeThinkerForConditionalGeneration`: the same parts as Qwen2.5-Omni's thinker
(decoder `model`, head `lm_head`, encoder `audio_tower`, an unused vision tower), with a sparse
MLP in every decoder layer: a router `mlp.gate.weight` [E, H] and the experts as two fused 3-D
parameters, `mlp.experts.gate_up_proj` [E, 2I, H] (gate half first) and `mlp.experts.down_proj`
[E, H, I]. Published checkpoints store one weight per expert (`mlp.experts.{e}.gate_proj.weight`,
`up_proj`, `down_proj`): transformers merges them on load, and our checkpoint writer splits them
again (`checkpoint_tensors`). Weight updates send the fused tensors under `thinker.` names: vLLM's
fused-MoE loader takes a 3-D expert tensor whole, one tensor per layer and kind instead of 3E.

Under ZeRO-3 the experts need no leaf-module marking (what ms-swift does for transformers 4.x,
whose experts were one module each): here they are one module with two parameters, gathered
whole when the block runs, so the parameter trace does not depend on the routing (tests/
test_learner.py runs two ZeRO-3 ranks on this family). Marking the sparse block a leaf broke our
two-pass forward (prompt, then completions) in DeepSpeed 0.19.8: its gradients were reduced twice
per step (an assertion in stage 3's bucket). LoRA's default targets match attention only here:
experts are parameters, not Linear modules.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from families.qwen2_5_omni import Qwen2_5Omni

NAMED_TOKENS = {  # the tokenizer attributes the Qwen3-Omni processor reads
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
EXPERT_KINDS = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")


class Qwen3Omni(Qwen2_5Omni):
    family = "qwen3-omni"
    model_types = ("qwen3_omni_moe", "qwen3_omni_moe_thinker")
    processor_classes = ("Qwen3OmniMoeProcessor",)
    forbidden_tokens = (*NAMED_TOKENS.values(), "<|im_start|>")

    def model_class(self) -> type:
        self.install_runtime_support()
        from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

        return Qwen3OmniMoeThinkerForConditionalGeneration

    def audio_embeddings(self, model, features, mask):
        tower = model.audio_tower
        mask = mask.to(tower.device)
        flat = model.get_audio_features(
            features.to(tower.device, dtype=tower.conv2d1.weight.dtype), feature_attention_mask=mask
        ).last_hidden_state
        return list(flat.split(_encoder_tokens(mask.sum(-1)).tolist()))

    def clip_tokens(self, audio_config) -> int:
        return int(_encoder_tokens(torch.tensor(3000)))  # 8x down: 390

    def checkpoint_tensors(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """A fused expert tensor as the published per-expert weights (views, no copy)."""
        if name.endswith(EXPERT_KINDS[0]):
            stem = name[: -len("gate_up_proj")]
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.shape[0]):
                yield f"{stem}{e}.gate_proj.weight", gate[e]
                yield f"{stem}{e}.up_proj.weight", up[e]
        elif name.endswith(EXPERT_KINDS[1]):
            stem = name[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                yield f"{stem}{e}.down_proj.weight", tensor[e]
        else:
            yield name, tensor

    def saved_config(self, model):
        from transformers import Qwen3OmniMoeConfig

        config = Qwen3OmniMoeConfig(thinker_config=model.config.to_dict(), enable_audio_output=False)
        config.architectures = ["Qwen3OmniMoeForConditionalGeneration"]
        return config


def _encoder_tokens(frames: torch.Tensor) -> torch.Tensor:
    """Encoder output tokens for clips of `frames` mel frames (the model's own formula)."""
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    return _get_feat_extract_output_lengths(frames)
