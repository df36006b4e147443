"""Sampling settings shared by every generation engine (vLLM for training and serving, HF for
reference), and the one function that turns them into vLLM's `SamplingParams`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingConfig:
    """R1-AQA's rollout sampling: 8 responses per question at temperature 1.0.

    R1-AQA's trainer sampled with transformers' default top_k=50; set `top_k: 50` to reproduce it
    exactly. 0 disables top-k. The learner reads `temperature` (log-probs of logits / T) and
    `max_tokens` (the completion budget, dr_grpo's normaliser) from here too.
    """

    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256


def vllm_sampling_params(
    sampling: SamplingConfig,
    forbidden: list[int],
    *,
    greedy: bool = False,
    logprobs: bool = False,
    **extra: Any,
):
    """vLLM's `SamplingParams` for rollouts, evaluation and serving alike (`greedy`: n=1, argmax).

    `logprobs` returns the sampled tokens' log-probs (the off-policy correction's denominator);
    `forbidden` token ids get a -100 logit bias; `extra` goes to SamplingParams as is.
    """
    from vllm import SamplingParams

    return SamplingParams(
        n=1 if greedy else sampling.n,
        temperature=0.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        top_k=0 if greedy or sampling.top_k <= 0 else sampling.top_k,
        max_tokens=sampling.max_tokens,
        logprobs=0 if logprobs else None,
        logit_bias={t: -100.0 for t in forbidden},
        **extra,
    )


def forbidden_token_ids(processor) -> list[int]:
    """Ids of the tokens generation forbids (those this tokenizer has): the family's audio
    placeholders and other modalities' tokens (a young policy can sample them, and fed back
    through the forward they break the audio merge) and the chat's turn opener."""
    from families import adapter_for

    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in adapter_for(processor).forbidden_tokens]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def end_token_ids(generation_config, tokenizer) -> list[int]:
    """Tokens that end a completion: the model's eos ids (Qwen2-Audio: <|im_end|>, <|endoftext|>)."""
    eos = generation_config.eos_token_id if generation_config is not None else None
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    return ids or [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def trim_completion(token_ids: list[int], end_ids: list[int], pad_id: int | None = None) -> list[int]:
    """Cut a generated sequence after its first end token (dropping padding that follows)."""
    for i, token in enumerate(token_ids):
        if token in end_ids:
            return list(token_ids[: i + 1])
    if pad_id is not None:
        while token_ids and token_ids[-1] == pad_id:
            token_ids = token_ids[:-1]
    return list(token_ids)
