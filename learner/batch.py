"""One rank's share of a step (`LearnerBatch`) and its cut into micro-batches (`MicroBatch`): the
padded rows one forward/backward pass scores. Shared by the GRPO update (`learner/update.py`) and
the SFT step (`learner/sft.py`); plain data and torch, no DeepSpeed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learner.policy import CompletionBatch, EncodedQuestions, build_rows


@dataclass
class LearnerBatch:
    """One rank's share of a step: questions (text, choices, 16 kHz audio) and their completions."""

    questions: list[tuple[str, list[str]]]
    waveforms: list[np.ndarray]
    completions: list[list[int]]  # token ids, grouped: completions of question q are consecutive
    question_index: list[int]  # completion -> index into questions
    advantages: list[float]  # one per completion
    # The sampling policy's log-prob of each completion token (from the rollout engine). Given, it is
    # the ratio's denominator: the off-policy correction for rollouts made one update behind.
    behaviour_logprobs: list[list[float]] | None = None

    def shard(self, rank: int, world_size: int) -> LearnerBatch:
        """This rank's questions (a contiguous slice) with all their completions."""
        n = len(self.questions)
        if n % world_size:
            raise ValueError(f"{n} questions do not split evenly over {world_size} learner ranks")
        lo, hi = rank * n // world_size, (rank + 1) * n // world_size
        rows = [i for i, q in enumerate(self.question_index) if lo <= q < hi]
        return LearnerBatch(
            self.questions[lo:hi],
            self.waveforms[lo:hi],
            [self.completions[i] for i in rows],
            [self.question_index[i] - lo for i in rows],
            [self.advantages[i] for i in rows],
            [self.behaviour_logprobs[i] for i in rows] if self.behaviour_logprobs else None,
        )


@dataclass
class MicroBatch:
    """Some of a batch's questions with all their completions, as padded rows."""

    questions: list[int]  # indices into the batch's questions
    completions: list[int]  # indices of their completions, in batch order (the rows' order)
    rows: CompletionBatch
    advantages: torch.Tensor  # [rows], float32

    @property
    def tokens(self) -> float:
        """Completion tokens that count (up to and including the first end token)."""
        return float(self.rows.completion_mask.sum())

    @property
    def responses(self) -> int:
        return self.rows.completion_ids.size(0)


def micro_batch(
    batch: LearnerBatch, encoded: EncodedQuestions, questions: list[int], pad_id: int, eos_ids: list[int]
) -> MicroBatch:
    """These questions of the batch with all their completions, as padded rows."""
    picked = [i for i, q in enumerate(batch.question_index) if q in questions]
    local = {q: j for j, q in enumerate(questions)}
    rows = build_rows(
        [encoded.prompt_ids[q] for q in questions],
        [batch.completions[i] for i in picked],
        [local[batch.question_index[i]] for i in picked],
        pad_id,
        eos_ids,
    )
    advantages = torch.tensor([batch.advantages[i] for i in picked], dtype=torch.float32)
    return MicroBatch(questions, picked, rows, advantages)


def micro_batches(
    batch: LearnerBatch, encoded: EncodedQuestions, size: int, pad_id: int, eos_ids: list[int]
) -> list[MicroBatch]:
    """The batch cut into micro-batches of `size` questions each (the last may be smaller)."""
    if size < 1:
        raise ValueError(f"micro-batch size must be at least 1 question, got {size}")
    n = len(batch.questions)
    return [
        micro_batch(batch, encoded, list(range(start, min(start + size, n))), pad_id, eos_ids)
        for start in range(0, n, size)
    ]


def passes(micro: list[MicroBatch], questions: int) -> list[list[MicroBatch]]:
    """Consecutive micro-batches joined into passes of at most `questions` questions (at least one
    micro-batch each): the no-grad passes, which keep nothing for a backward and can be larger."""
    groups: list[list[MicroBatch]] = []
    for m in micro:
        if groups and sum(len(g.questions) for g in groups[-1]) + len(m.questions) <= questions:
            groups[-1].append(m)
        else:
            groups.append([m])
    return groups


def split_rows(values: torch.Tensor, group: list[MicroBatch]) -> list[torch.Tensor]:
    """A joined pass's [rows, T] values cut back into its micro-batches' [rows_m, T_m] (their rows
    are consecutive in it; a micro-batch's own padding is never wider than the pass's)."""
    out, start = [], 0
    for m in group:
        out.append(values[start : start + m.responses, : m.rows.completion_ids.size(1)])
        start += m.responses
    return out


def behaviour_logprobs(batch: LearnerBatch, micro: MicroBatch) -> torch.Tensor | None:
    """The rollout engine's log-probs for a micro-batch's rows, padded like the rows: [N, T]."""
    if not batch.behaviour_logprobs:
        return None
    out = torch.zeros(micro.responses, micro.rows.completion_ids.size(1))
    for row, i in enumerate(micro.completions):
        values = batch.behaviour_logprobs[i]
        if len(values) != len(batch.completions[i]):
            tokens = len(batch.completions[i])
            raise ValueError(f"completion {i}: {len(values)} log-probs for {tokens} tokens")
        out[row, : len(values)] = torch.tensor(values)
    return out
