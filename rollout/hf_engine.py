"""Generation with transformers' `generate`: the reference engine (and R1-AQA's own way).

Used by the one-process GRPO loop (the learning proof and the baseline benchmark) and by tests
that compare vLLM against it. Training at scale uses the vLLM engine.
"""

from __future__ import annotations

import numpy as np
import torch

from families import adapter_for
from rollout.audio import SAMPLE_RATE
from rollout.prompt import render_prompt
from rollout.question import AudioQuestion, Completion, RolloutResult
from rollout.sampling import SamplingConfig, end_token_ids, forbidden_token_ids, trim_completion


@torch.no_grad()
def hf_generate(
    model,
    processor,
    questions: list[tuple[str, list[str]]],
    waveforms: list[np.ndarray],
    sampling: SamplingConfig,
    *,
    greedy: bool = False,
    thinking: bool = False,
) -> list[list[list[int]]]:
    """Completions (token ids, cut after the first end token) per question: [B][n][tokens]."""
    tokenizer = processor.tokenizer
    texts = [render_prompt(processor, q, c, thinking=thinking) for q, c in questions]
    inputs = adapter_for(processor).batch_inputs(processor, texts, list(waveforms), SAMPLE_RATE)
    n = 1 if greedy else sampling.n
    was_training = model.training
    model.eval()
    output = model.generate(
        **inputs.to(model.device),
        do_sample=not greedy,
        temperature=sampling.temperature if not greedy else None,
        top_k=sampling.top_k if not greedy else None,
        top_p=sampling.top_p if not greedy else None,
        max_new_tokens=sampling.max_tokens,
        num_return_sequences=n,
        suppress_tokens=forbidden_token_ids(processor),
        pad_token_id=tokenizer.pad_token_id,
    )
    model.train(was_training)
    generated = output[:, inputs.input_ids.shape[1] :].tolist()
    ends = end_token_ids(model.generation_config, tokenizer)
    trimmed = [trim_completion(ids, ends, tokenizer.pad_token_id) or [ends[0]] for ids in generated]
    return [trimmed[i * n : (i + 1) * n] for i in range(len(questions))]


def hf_rollouts(
    model,
    processor,
    questions: list[AudioQuestion],
    waveforms: list[np.ndarray],
    sampling: SamplingConfig,
    *,
    greedy: bool = False,
    thinking: bool = False,
    version: int = 0,
) -> list[RolloutResult]:
    """`hf_generate` as the rollout pool answers: one `RolloutResult` per question, texts decoded,
    each marked with the policy `version` that generated it."""
    groups = hf_generate(
        model,
        processor,
        [(q.question, q.choices) for q in questions],
        waveforms,
        sampling,
        greedy=greedy,
        thinking=thinking,
    )
    decode = processor.tokenizer.batch_decode
    return [
        RolloutResult(
            q.id,
            [
                Completion(ids, text)
                for ids, text in zip(group, decode(group, skip_special_tokens=True), strict=True)
            ],
            version,
        )
        for q, group in zip(questions, groups, strict=True)
    ]
