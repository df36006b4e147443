"""Each question's prompt (audio included) runs once for all of its completions: the hidden states
that predict every completion token, the numbers of one full row per completion at ~1/n of the
prompt's compute. Two ways, both the same numbers as full rows (tested in float32):

- `cached_hidden` (gradient checkpointing off): the prompts run once with a key/value cache, the
  cache rows are picked per completion, and the completions run on top of it. A checkpointed
  layer would append to the cache again when recomputed, hence the second way:
- `packed_hidden` (gradient checkpointing on; the reference then takes the same way): one row per
  question, its prompt once and then each of its completions in a block of its own, with a block
  attention mask (each completion sees the prompt and its own earlier tokens, never another
  completion) and each completion's own positions; one plain forward, which checkpointing
  recomputes like any other (the layout of Prefix Grouper, arXiv 2506.05433, written with
  transformers' 4D masks). The attention scores
  between blocks are computed and masked: (P + nT)^2 instead of n(P + T)^2 per question.

Rows come as `CompletionBatch` ([left padding | prompt | completion | right padding] per
completion); both return [N, T, hidden], position t predicting completion token t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Attention implementations that take an arbitrary 4D mask (flash attention does not).
PACKED_ATTENTION = ("sdpa", "eager")
Embed = Callable[[torch.Tensor, int], torch.Tensor]  # (ids, prompt length) -> embeddings, audio merged


@dataclass
class PackedRows:
    """One row per question: [left padding | prompt | block 0 | block 1 | ...], each block one
    completion padded to T."""

    input_ids: torch.Tensor  # [Q, P + G*T]
    position_ids: torch.Tensor  # [Q, P + G*T]
    allowed: torch.Tensor  # [Q, 1, L, L] bool: query i may attend key j
    row_to_prompt: torch.Tensor  # [N]: each completion's packed row
    columns: torch.Tensor  # [N, T]: each completion's token columns in its packed row


def pack_rows(ids: torch.Tensor, attention: torch.Tensor, question_index: torch.Tensor, prompt_length: int):
    """`PackedRows` from a CompletionBatch's ids and attention mask (on their device)."""
    device, (n, width) = ids.device, ids.shape
    start, length = prompt_length, width - prompt_length
    questions, row_to_prompt = torch.unique(question_index.to(device), return_inverse=True)
    slot = torch.zeros(n, dtype=torch.long, device=device)  # each completion's block in its row
    for q in range(len(questions)):
        rows = (row_to_prompt == q).nonzero().squeeze(1)
        slot[rows] = torch.arange(len(rows), device=device)
    blocks = int(slot.max()) + 1
    first_rows = torch.stack([(row_to_prompt == q).nonzero()[0, 0] for q in range(len(questions))])
    columns = start + slot[:, None] * length + torch.arange(length, device=device)  # [N, T]
    # Rows padded to a multiple of 16: the memory-efficient SDPA kernels want the mask's last
    # dimension aligned, and would otherwise pad it themselves or fall back to materialised scores.
    size = (len(questions), -(-(start + blocks * length) // 16) * 16)
    packed = torch.zeros(size, dtype=ids.dtype, device=device)
    real = torch.zeros(size, dtype=torch.bool, device=device)
    positions = torch.zeros(size, dtype=torch.long, device=device)
    packed[:, :start], real[:, :start] = ids[first_rows, :start], attention[first_rows, :start].bool()
    full_positions = (attention.cumsum(-1) - 1).clamp(min=0)  # as a full row numbers its tokens
    positions[:, :start] = full_positions[first_rows, :start]
    packed[row_to_prompt[:, None], columns] = ids[:, start:]
    real[row_to_prompt[:, None], columns] = attention[:, start:].bool()
    positions[row_to_prompt[:, None], columns] = full_positions[:, start:]
    # Block of each column: -1 for the prompt, k for completion block k.
    block = torch.full(size, -1, dtype=torch.long, device=device)
    block[row_to_prompt[:, None], columns] = slot[:, None].expand(-1, length)
    order = torch.arange(size[1], device=device)
    causal = order[None, :, None] >= order[None, None, :]  # [1, L(query), L(key)]
    visible = (block[:, None, :] == -1) | (block[:, None, :] == block[:, :, None])
    allowed = (causal & visible & real[:, None, :]) | torch.eye(size[1], dtype=torch.bool, device=device)
    return PackedRows(packed, positions, allowed[:, None], row_to_prompt, columns)


def packed_hidden(decoder, embed: Embed, rows, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The completions' predicting hidden states [N, T, H] from one forward over packed rows.
    `embed(ids, prompt_length)` gives the input embeddings with the prompts' audio merged in."""
    ids, attention = rows.input_ids.to(device), rows.attention_mask.to(device)
    packed = pack_rows(ids, attention, rows.question_index, rows.prompt_length)
    mask = packed.allowed
    if decoder.config._attn_implementation == "eager":  # an additive mask, in the activations' dtype
        blocked = torch.finfo(dtype).min
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, blocked)
    hidden = decoder(
        inputs_embeds=embed(packed.input_ids, rows.prompt_length),
        attention_mask=mask,
        position_ids=packed.position_ids,
        use_cache=False,
    ).last_hidden_state
    # The prompt's last state predicts each completion's first token; block state t, token t + 1.
    first = hidden[packed.row_to_prompt, rows.prompt_length - 1][:, None]
    rest = hidden[packed.row_to_prompt[:, None], packed.columns[:, :-1]]
    return torch.cat([first, rest], dim=1)


def cached_hidden(decoder, embed: Embed, token_embed, rows, device: torch.device) -> torch.Tensor:
    """The completions' predicting hidden states [N, T, H]: prompts once with a cache, the
    completions on the cache rows picked for them (gradients flow back into the one prompt pass)."""
    ids, attention = rows.input_ids.to(device), rows.attention_mask.to(device)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: generation's positions
    start = rows.prompt_length
    questions, row_to_prompt = torch.unique(rows.question_index, return_inverse=True)
    first_rows = [int((rows.question_index == q).nonzero()[0]) for q in questions]
    prompt = decoder(
        inputs_embeds=embed(ids[first_rows, :start], start),
        attention_mask=attention[first_rows, :start],
        position_ids=position_ids[first_rows, :start],
        use_cache=True,
    )
    cache = prompt.past_key_values
    row_to_prompt = row_to_prompt.to(ids.device)
    cache.batch_select_indices(row_to_prompt)
    tail = decoder(
        inputs_embeds=token_embed(ids[:, start:]),
        attention_mask=attention,
        position_ids=position_ids[:, start:],
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    first = prompt.last_hidden_state[:, -1:][row_to_prompt]
    return torch.cat([first, tail[:, :-1]], dim=1)
