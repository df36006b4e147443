"""Audio-text retrieval metrics, as DCASE Task 6B reports them: recall at 1, 5 and 10 and mAP@10,
text-to-audio and audio-to-text, from a similarity matrix. Standard library only.

Text to audio: each caption has one relevant clip (its own); R@k is the fraction of captions whose
clip ranks in the top k, and AP@10 is 1/rank when it does (else 0). Audio to text: each clip has
its captions as relevant (5 in Clotho); R@k is the fraction of clips with one of them in the top
k, and AP@10 is the sum of precision at each relevant rank within 10, over the number of relevant
captions. A tie with an irrelevant item ranks the wanted one below it (a constant model gains nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

KS = (1, 5, 10)


def _ranks(scores: Sequence[float], relevant: set[int]) -> list[int]:
    """1-based ranks of the relevant items (best first), an irrelevant item that ties one counted
    above it."""
    ordered = sorted(relevant, key=lambda item: -scores[item])
    return [
        sum(1 for j, s in enumerate(scores) if j not in relevant and s >= scores[item]) + k + 1
        for k, item in enumerate(ordered)
    ]


def _average_precision(ranks: list[int], n_relevant: int, cutoff: int = 10) -> float:
    hits = [r for r in ranks if r <= cutoff]
    return sum((i + 1) / r for i, r in enumerate(hits)) / n_relevant


def retrieval_metrics(similarity: Sequence[Sequence[float]], clip_of_text: Sequence[int]) -> dict[str, float]:
    """`similarity[t][a]`: caption t against clip a; `clip_of_text[t]`: the clip caption t describes.
    Returns t2a_R1, t2a_R5, t2a_R10, t2a_mAP10 and the same for a2t, in percent."""
    n_clips = len(similarity[0]) if similarity else 0
    if not n_clips or len(similarity) != len(clip_of_text):
        raise ValueError("need one similarity row per caption and at least one clip")
    out: dict[str, float] = {}
    t2a = [_ranks(row, {clip}) for row, clip in zip(similarity, clip_of_text, strict=True)]
    texts_of_clip: dict[int, set[int]] = {a: set() for a in range(n_clips)}
    for t, clip in enumerate(clip_of_text):
        texts_of_clip[clip].add(t)
    columns = [[row[a] for row in similarity] for a in range(n_clips)]
    a2t = [(_ranks(columns[a], texts), len(texts)) for a, texts in texts_of_clip.items() if texts]
    for k in KS:
        out[f"t2a_R{k}"] = 100.0 * sum(r[0] <= k for r in t2a) / len(t2a)
        out[f"a2t_R{k}"] = 100.0 * sum(r[0] <= k for r, _ in a2t) / len(a2t)
    out["t2a_mAP10"] = 100.0 * sum(_average_precision(r, 1) for r in t2a) / len(t2a)
    out["a2t_mAP10"] = 100.0 * sum(_average_precision(r, n) for r, n in a2t) / len(a2t)
    return out


def chance_level(n_clips: int, captions_per_clip: float = 1.0) -> dict[str, float]:
    """What a model that ranks at random scores in expectation on R@k (percent), for comparison."""
    out = {}
    for k in KS:
        out[f"t2a_R{k}"] = 100.0 * min(1.0, k / n_clips)
        n_texts = n_clips * captions_per_clip
        miss = 1.0
        for i in range(int(round(captions_per_clip))):  # P(no relevant caption among the top k)
            miss *= max(0.0, (n_texts - k - i) / (n_texts - i))
        out[f"a2t_R{k}"] = 100.0 * (1.0 - miss)
    return out
