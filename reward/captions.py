"""Caption metrics, standard library only, as the COCO caption tools (pycocoevalcap 1.2) compute them
on the same words: CIDEr-D (`CiderD`, the reward and the metric), BLEU-1..4 (`bleu`) and ROUGE-L
(`rouge_l`). Text is normalised one way for all of them (`caption_words`): lower-cased,
punctuation removed, split on whitespace.

CIDEr-D weighs each n-gram by its inverse document frequency, counted over a corpus of clips (an
n-gram once per clip, in any of its references). That corpus must be the whole training set,
counted once: scored within one GRPO group (n completions of one clip) every n-gram's frequency
would be log(1/1) = 0 and every reward 0. `CiderD(corpus)` holds the counts; `score` then rates
one candidate against its clip's references exactly as `CiderScorer` does when it scores the whole
corpus at once (tf-idf vectors per n-gram order, each candidate weight clipped to the reference's,
a Gaussian penalty (sigma 6) on the difference in length, which it counts in bigrams, the mean
over n = 1..4 and over the references, times 10).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_PUNCTUATION = re.compile(r"[^\w\s]")


def caption_words(text: str) -> list[str]:
    """Lower-cased, punctuation removed, split on whitespace (any script: \\w is Unicode)."""
    return _PUNCTUATION.sub("", text.lower()).split()


def ngram_counts(words: Sequence[str], n: int = 4) -> Counter:
    """Every 1..n-gram of `words` (as tuples) with its count."""
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    """CIDEr-D against a corpus's document frequencies (`corpus`: each clip's references)."""

    def __init__(self, corpus: Iterable[Sequence[str]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        self.document_frequency: Counter = Counter()
        clips = 0
        for references in corpus:
            clips += 1
            self.document_frequency.update(
                {g for ref in references for g in ngram_counts(caption_words(ref), n)}
            )
        if not clips:
            raise ValueError("CIDEr-D needs a corpus of at least one clip's references")
        self.log_clips = math.log(float(clips))

    def _vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        """tf-idf weights per n-gram order, their norms, and the length (in bigrams, as CIDEr-D's
        reference code counts it)."""
        vectors: list[dict] = [{} for _ in range(self.n)]
        squares, length = [0.0] * self.n, 0
        for gram, tf in counts.items():
            order = len(gram) - 1
            weight = float(tf) * (self.log_clips - math.log(max(1.0, self.document_frequency[gram])))
            vectors[order][gram] = weight
            squares[order] += weight**2
            if order == 1:
                length += tf
        return vectors, [math.sqrt(s) for s in squares], length

    def _similarity(self, hyp, ref) -> list[float]:
        (h_vec, h_norm, h_len), (r_vec, r_norm, r_len) = hyp, ref
        penalty = math.e ** (-(float(h_len - r_len) ** 2) / (2 * self.sigma**2))
        values = []
        for k in range(self.n):
            value = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, w in h_vec[k].items())
            if h_norm[k] != 0 and r_norm[k] != 0:
                value /= h_norm[k] * r_norm[k]
            values.append(value * penalty)
        return values

    def score(self, candidate: str, references: Sequence[str]) -> float:
        """CIDEr-D of one candidate against its clip's references (0 to about 10 in practice)."""
        if not references:
            raise ValueError("CIDEr-D needs at least one reference")
        hyp = self._vector(ngram_counts(caption_words(candidate), self.n))
        totals = [0.0] * self.n
        for reference in references:
            ref = self._vector(ngram_counts(caption_words(reference), self.n))
            totals = [t + v for t, v in zip(totals, self._similarity(hyp, ref), strict=True)]
        return sum(totals) / self.n / len(references) * 10.0


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n (the COCO tools' way: clipped n-gram matches summed over the corpus, the
    brevity penalty from each candidate's closest reference length)."""
    tiny, small = 1e-15, 1e-9  # theirs: a zero match count still gives 0, never a zero division
    guess, correct, test_len, ref_len = [0] * n, [0] * n, 0, 0
    for candidate, refs in zip(candidates, references, strict=True):
        words = caption_words(candidate)
        ref_words = [caption_words(r) for r in refs]
        most: Counter = Counter()
        for r in ref_words:
            for gram, count in ngram_counts(r, n).items():
                most[gram] = max(most[gram], count)
        test_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for gram, count in ngram_counts(words, n).items():
            correct[len(gram) - 1] += min(most[gram], count)
        for k in range(n):
            guess[k] += max(0, len(words) - k)
    scores, product = [], 1.0
    for k in range(n):
        product *= float(correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    return [s * math.exp(1 - 1 / ratio) for s in scores] if ratio < 1 else scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, references: Sequence[str], beta: float = 1.2) -> float:
    """ROUGE-L F (beta 1.2) from the best precision and the best recall over the references."""
    words = caption_words(candidate)
    if not words:
        return 0.0
    lcs = [_lcs([w for w in caption_words(r)], words) for r in references]
    precision = max(x / len(words) for x in lcs)
    recall = max(x / max(1, len(caption_words(r))) for x, r in zip(lcs, references, strict=True))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
