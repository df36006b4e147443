"""Format warm start: a short supervised pass that teaches `<answer>choice</answer>`, not the answer.

A randomly initialised model never emits the answer format, so GRPO's rewards would all be zero and
its advantages empty. Targets name a *random* choice, so the model learns the format and the
choice vocabulary while its accuracy stays at chance: whatever it later learns about the audio,
GRPO taught it. A caption item's target is a reference of a random clip of the training set (the
caption vocabulary, not this clip's words). The end token is part of the target, or it would never
be sampled. With `thinking` the prompt asks for thinking and the target is
`<think>The audio sounds X.</think> <answer>X</answer>` (X random): the model learns to decide in
its think block, and GRPO to decide well.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from learner.hf_format import save_hf_folder
from learner.policy import audio_embeddings, build_rows, completion_logprobs, encode_questions
from reward.rewards import rewarded_response
from rollout.question import AudioQuestion
from rollout.sampling import end_token_ids

THINKING_REASONING = "The audio sounds {}."  # the warm start's think block (in the tokenizer's corpus)


def warm_start_target(choice: str, thinking: bool) -> str:
    return rewarded_response(choice, thinking=thinking, reasoning=THINKING_REASONING.format(choice))


def random_answer(rng: random.Random, item: AudioQuestion, items: list[AudioQuestion]) -> str:
    """A random choice of the question, or a random reference of a random captioned clip."""
    if item.choices:
        return rng.choice(item.choices)
    return rng.choice(rng.choice([q for q in items if q.references] or [item]).references)


def format_warm_start(
    model_dir: str | Path,
    questions: list[AudioQuestion],
    waveforms: dict[str, np.ndarray],
    out_dir: str | Path,
    *,
    steps: int = 80,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    thinking: bool = False,
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """Train on random-choice answer targets (the thinking format's with `thinking`) and write the
    result as an HF folder."""
    from families import adapter_for, load_processor

    rng = random.Random(seed)
    torch.manual_seed(seed)
    processor = load_processor(model_dir)
    model = adapter_for(str(model_dir)).load(str(model_dir), torch.float32)
    model.train()
    tokenizer = processor.tokenizer
    ends = end_token_ids(model.generation_config, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        picked = rng.sample(questions, min(batch_size, len(questions)))
        encoded = encode_questions(
            processor,
            [(q.question, q.choices) for q in picked],
            [waveforms[q.id] for q in picked],
            thinking=thinking,
        )
        targets = [
            tokenizer(warm_start_target(random_answer(rng, q, questions), thinking) + "<|im_end|>").input_ids
            for q in picked
        ]
        rows = build_rows(encoded.prompt_ids, targets, list(range(len(picked))), tokenizer.pad_token_id, ends)
        audio = audio_embeddings(model, *encoded.audio(list(range(len(picked)))))
        logp = completion_logprobs(model, rows, audio)
        mask = rows.completion_mask.float()
        loss = -(logp * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if progress:
            progress(step + 1, float(loss))
    model.eval()
    return save_hf_folder(model, processor, out_dir)
