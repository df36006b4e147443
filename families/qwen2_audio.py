"""Qwen2-Audio (Qwen/Qwen2-Audio-7B-Instruct, R1-AQA's model): the family the project started with.

Its processor pads every clip to 30 s (3000 mel frames) and expands `<|AUDIO|>` to one token per
40 ms of the clip; the encoder is Whisper-like (`Qwen2AudioEncoder`) and a linear projector maps
its output into the language model. transformers 5.19 keeps the model in memory as
`model.audio_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*` and `lm_head.*`,
and its `save_pretrained` writes the language model's keys wrongly as
`language_model.model.model.*`; the published checkpoints (and vLLM) use `audio_tower.*`,
`multi_modal_projector.*`, `language_model.model.*` and `language_model.lm_head.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from families.base import ModelAdapter


def whisper_tower_embeddings(
    tower, project, features: torch.Tensor, mask: torch.Tensor
) -> list[torch.Tensor]:
    """Projected encoder output per row, cropped to each row's length ([n_i, hidden] each).

    Runs the encoder's own modules as `Qwen2AudioEncoder.forward` does, on the mel frames up to the
    longest clip in the batch plus a margin instead of all 3000: positions past a clip's end are
    masked out of attention and cropped away, and each kept position's convolutions read the same
    frames, so the numbers are the full-length ones (to float rounding) at a fraction of the cost
    for short clips (a 2 s clip: ~1/12 of the frames).
    """
    features = features.to(tower.device, dtype=tower.conv1.weight.dtype)
    mel_lengths = mask.sum(-1).to(tower.device)
    feat_lengths, output_lengths = tower._get_feat_extract_output_lengths(mel_lengths)
    # + 8 frames: the convolutions at the last kept position still see real (padding) frames.
    frames = min(features.shape[-1], -(-(int(mel_lengths.max()) + 8) // 4) * 4)
    hidden = F.gelu(tower.conv1(features[..., :frames]))
    hidden = F.gelu(tower.conv2(hidden)).permute(0, 2, 1)
    batch, positions = hidden.shape[:2]
    hidden = hidden + tower.embed_positions(torch.arange(positions, device=hidden.device))
    hidden = F.dropout(hidden, p=tower.dropout, training=tower.training)
    keep = (torch.arange(positions, device=hidden.device)[None] < feat_lengths[:, None]).long()
    from transformers.masking_utils import create_bidirectional_mask  # heavy: imported when run

    attention = create_bidirectional_mask(config=tower.config, inputs_embeds=hidden, attention_mask=keep)
    for layer in tower.layers:
        if tower.training and torch.rand([]) < tower.layerdrop:  # LayerDrop, as the encoder does
            continue
        hidden = layer(hidden, attention)
    hidden = tower.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1)
    projected = project(tower.layer_norm(hidden))
    return [projected[i, : int(output_lengths[i])] for i in range(batch)]


class Qwen2Audio(ModelAdapter):
    family = "qwen2-audio"
    model_types = ("qwen2_audio",)
    processor_classes = ("Qwen2AudioProcessor",)
    published_prefixes = (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.audio_tower.", "audio_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    )
    forbidden_tokens = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|im_start|>")
    lora_audio = (
        r".*audio_tower\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)"
        r"|.*multi_modal_projector\.linear"
    )

    def model_class(self) -> type:
        from transformers import Qwen2AudioForConditionalGeneration

        return Qwen2AudioForConditionalGeneration

    def zero3_external_parameters(self, model):
        # The encoder adds embed_positions.weight directly rather than calling the embedding.
        tower = model.model.audio_tower
        return [(tower, tower.embed_positions.weight)]

    def audio_embeddings(self, model, features, mask):
        core = model.model
        return whisper_tower_embeddings(core.audio_tower, core.multi_modal_projector, features, mask)
