"""Token log-probabilities of completions under an audio language model, the audio encoded once per
clip.

Qwen2-Audio pads every clip to 30 s (3000 mel frames), so each encoder pass costs the same whatever
the clip's length. R1-AQA's trainer runs the encoder once per completion (8x per clip); here each
question's audio is encoded once and its features are scattered into all of its completions' rows,
for the policy and the reference alike. The computation otherwise follows transformers' forward
(same masks, same merge), so the numbers equal a plain forward. What differs between model
families (where the decoder sits, how audio becomes embeddings) is the family's adapter's
(`families/`).

Row layout: [left padding | prompt (audio tokens expanded) | completion | right padding].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from families import adapter_for
from learner.grpo import completion_mask, token_logprobs
from learner.shared_prompt import PACKED_ATTENTION, cached_hidden, packed_hidden
from rollout.audio import SAMPLE_RATE
from rollout.prompt import render_prompt


def clip_rows(windows: list[int]) -> list[range]:
    """Each clip's feature rows, its windows being consecutive rows."""
    starts = np.cumsum([0, *windows]).tolist()
    return [range(starts[i], starts[i + 1]) for i in range(len(windows))]


@dataclass
class EncodedQuestions:
    """Processor outputs for a set of questions: prompt ids (audio expanded) and mel features, one
    row per encoder window (`windows[q]` rows for question q: one unless the family splits long
    clips)."""

    prompt_ids: list[list[int]]
    input_features: torch.Tensor  # [windows, mels, frames]
    feature_attention_mask: torch.Tensor  # [windows, frames]
    windows: list[int]

    def audio(self, questions: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The feature rows, mask rows and window counts of `questions`, in their order."""
        spans = clip_rows(self.windows)
        rows = [r for q in questions for r in spans[q]]
        return (
            self.input_features[rows],
            self.feature_attention_mask[rows],
            [self.windows[q] for q in questions],
        )


def encode_questions(
    processor, questions: list[tuple[str, list[str]]], waveforms: list[np.ndarray], thinking: bool = False
) -> EncodedQuestions:
    """Render each prompt through the chat template and run the processor (which expands the audio
    placeholder), the family's way."""
    adapter = adapter_for(processor)
    clips = [
        adapter.encode(
            processor, render_prompt(processor, question, choices, thinking=thinking), wave, SAMPLE_RATE
        )
        for (question, choices), wave in zip(questions, waveforms, strict=True)
    ]
    # A processor that pads each clip only to its own length (Qwen3-Omni) gives rows of several
    # lengths: padded to the longest, the mask says which frames are real.
    frames = max(c.features.shape[-1] for c in clips)
    return EncodedQuestions(
        [c.prompt_ids for c in clips],
        torch.cat([F.pad(c.features, (0, frames - c.features.shape[-1])) for c in clips]),
        torch.cat([F.pad(c.feature_mask, (0, frames - c.feature_mask.shape[-1])) for c in clips]),
        [len(c.features) for c in clips],
    )


def audio_embeddings(
    model,
    input_features: torch.Tensor,
    feature_attention_mask: torch.Tensor,
    windows: list[int] | None = None,
) -> list[torch.Tensor]:
    """Projected audio embeddings per clip ([n_i, hidden] each), a clip's windows joined in order
    (`windows`: rows per clip; None: one each). The family's encoder path (see its adapter)."""
    rows = adapter_for(model).audio_embeddings(model, input_features, feature_attention_mask)
    if windows is None:
        return rows
    return [torch.cat([rows[r] for r in span]) for span in clip_rows(windows)]


@dataclass
class CompletionBatch:
    """Padded rows for N completions of B questions; `question_index[n]` names each row's question."""

    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    completion_ids: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T]: up to and including the first end token
    question_index: torch.Tensor  # [N]
    prompt_length: int  # P


def build_rows(
    prompt_ids: list[list[int]],
    completions: list[list[int]],
    question_index: list[int],
    pad_id: int,
    eos_ids: list[int],
) -> CompletionBatch:
    """Left-pad prompts to a common length, right-pad completions, and mask after the first end."""
    if not completions or any(len(c) == 0 for c in completions):
        raise ValueError("every completion needs at least one token")
    prompt_len = max(len(prompt_ids[q]) for q in question_index)
    comp_len = max(len(c) for c in completions)
    n = len(completions)
    ids = torch.full((n, prompt_len + comp_len), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for row, (q, comp) in enumerate(zip(question_index, completions, strict=True)):
        prompt = prompt_ids[q]
        ids[row, prompt_len - len(prompt) : prompt_len] = torch.tensor(prompt)
        ids[row, prompt_len : prompt_len + len(comp)] = torch.tensor(comp)
        attention[row, prompt_len - len(prompt) : prompt_len + len(comp)] = 1
    comp_ids = ids[:, prompt_len:]
    mask = completion_mask(comp_ids, eos_ids, pad_mask=attention[:, prompt_len:])
    return CompletionBatch(ids, attention, comp_ids, mask, torch.tensor(question_index), prompt_len)


def _merge_audio(model, ids: torch.Tensor, prompt_length: int, features: torch.Tensor) -> torch.Tensor:
    """Token embeddings of `ids` with the audio features scattered into the prompts' audio slots."""
    embeds = model.get_input_embeddings()(ids)
    # Audio slots only inside the prompt: a sampled placeholder in a completion stays a plain token
    # (a young policy can sample it, and the merge would then fail).
    slots = ids == adapter_for(model).audio_token_id(model)
    slots[:, prompt_length:] = False
    if int(slots.sum()) != features.shape[0]:
        raise ValueError(
            f"{int(slots.sum())} audio tokens in the prompts but {features.shape[0]} audio features"
        )
    return embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))


def completion_logprobs(
    model,
    batch: CompletionBatch,
    audio: list[torch.Tensor],
    temperature: float = 1.0,
    share_prompt: bool = True,
    packed: bool | None = None,
) -> torch.Tensor:
    """log p(completion token | prompt, audio, earlier tokens) for every row: [N, T].

    With `share_prompt`, each question's prompt runs once for all its completions
    (`learner/shared_prompt.py`): in packed rows with a block mask when `packed` (None: when the
    decoder checkpoints its layers, which a cache cannot survive), else on a key/value cache;
    without, one full row per completion. The same numbers every way (to float rounding: a policy
    and its reference take the same way, so their log-probs agree bit for bit on equal weights).
    """
    lm = adapter_for(model).decoder(model)
    embeddings = model.get_input_embeddings()
    device, dtype = embeddings.weight.device, embeddings.weight.dtype
    questions = torch.unique(batch.question_index)  # the order both shared paths take the prompts in
    checkpointing = getattr(lm, "gradient_checkpointing", False)
    packed = checkpointing if packed is None else packed
    if share_prompt and packed and lm.config._attn_implementation in PACKED_ATTENTION:
        features = torch.cat([audio[int(q)] for q in questions])
        embed = lambda ids, start: _merge_audio(model, ids, start, features)  # noqa: E731
        hidden = packed_hidden(lm, embed, batch, device, dtype)
    elif share_prompt and not packed and not checkpointing:
        features = torch.cat([audio[int(q)] for q in questions])
        embed = lambda ids, start: _merge_audio(model, ids, start, features)  # noqa: E731
        hidden = cached_hidden(lm, embed, embeddings, batch, device)
    else:
        features = torch.cat([audio[int(q)] for q in batch.question_index])
        ids, attention = batch.input_ids.to(device), batch.attention_mask.to(device)
        start, length = batch.prompt_length, batch.completion_ids.size(1)
        hidden = lm(
            inputs_embeds=_merge_audio(model, ids, start, features),
            attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),  # left padding: generation's positions
            use_cache=False,
        ).last_hidden_state[:, start - 1 : start - 1 + length]
    logits = model.lm_head(hidden)
    return token_logprobs(logits, batch.completion_ids.to(device), temperature)


class CompletionScorer(torch.nn.Module):
    """A model's completion log-probs behind one `forward`: audio encoded once per clip, then the
    completions (`completion_logprobs`).

    DeepSpeed wraps this module rather than the HF model: under ZeRO-3 its hooks see one root
    forward per micro-batch, which is what closes a step's parameter trace (the trace resets at the
    root's forward) and turns on prefetching. Calling the towers directly would leave the trace
    open forever and every all-gather on demand.
    """

    def __init__(self, model: torch.nn.Module, temperature=1.0, share_prompt=True, packed=False):
        super().__init__()
        self.model = model
        # `packed`: the policy's gradient checkpointing, for the policy and its reference alike.
        self.temperature, self.share_prompt, self.packed = temperature, share_prompt, packed

    def forward(
        self,
        rows: CompletionBatch,
        input_features: torch.Tensor,
        feature_attention_mask: torch.Tensor,
        windows: list[int] | None = None,
    ) -> torch.Tensor:
        audio = audio_embeddings(self.model, input_features, feature_attention_mask, windows)
        return completion_logprobs(self.model, rows, audio, self.temperature, self.share_prompt, self.packed)
