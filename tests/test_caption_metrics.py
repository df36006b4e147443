"""Caption metrics (`reward/captions.py`, stdlib) against pycocoevalcap 1.2 (a dev extra), the
numbers audio captioning papers report: CIDEr-D per candidate when the COCO scorer scores the whole
corpus at once, corpus BLEU-1..4 and ROUGE-L, on the same normalised words."""

from __future__ import annotations

import random

import pytest

from reward.captions import CiderD, bleu, caption_words, rouge_l

WORDS = "a dog barks loudly while the high tone beeps twice and a low hum rises in the rain".split()


def corpus(seed: int, clips: int = 60) -> list[tuple[str, list[str]]]:
    """(candidate, five references) per clip, from a small vocabulary: n-grams repeat across clips."""
    rng = random.Random(seed)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))  # noqa: E731
    return [(sentence(), [sentence() for _ in range(5)]) for _ in range(clips)]


def normalised(text: str) -> str:
    return " ".join(caption_words(text))


def test_caption_words_lower_cases_drops_punctuation_and_splits():
    assert caption_words("A dog's bark, then RAIN...  and a high-pitched beep!") == [
        "a", "dogs", "bark", "then", "rain", "and", "a", "highpitched", "beep",
    ]  # fmt: skip
    assert caption_words("Ein Hund bellt; 狗叫。") == ["ein", "hund", "bellt", "狗叫"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cider_d_equals_the_coco_scorer_on_the_whole_corpus(seed):
    scorer_module = pytest.importorskip("pycocoevalcap.cider.cider_scorer")
    items = corpus(seed)
    theirs = scorer_module.CiderScorer(n=4, sigma=6.0)
    for candidate, references in items:
        theirs += (normalised(candidate), [normalised(r) for r in references])
    mean, per_item = theirs.compute_score()
    ours = CiderD([references for _, references in items])
    scores = [ours.score(candidate, references) for candidate, references in items]
    assert scores == pytest.approx(list(per_item), abs=1e-9)
    assert sum(scores) / len(scores) == pytest.approx(mean, abs=1e-9) and mean > 0
    # Exact copies of a reference score highest; within one group's own references the document
    # frequency would make every weight 0 (why the corpus is counted once, up front).
    assert ours.score(items[0][1][0], items[0][1]) > max(scores)
    assert CiderD([items[0][1]]).score(items[0][1][0], items[0][1]) == 0.0


def test_bleu_and_rouge_l_equal_the_coco_tools():
    bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu")
    rouge_module = pytest.importorskip("pycocoevalcap.rouge.rouge")
    items = corpus(3)
    gts = {i: [normalised(r) for r in refs] for i, (_, refs) in enumerate(items)}
    res = {i: [normalised(c)] for i, (c, _) in enumerate(items)}
    their_bleu, _ = bleu_module.Bleu(4).compute_score(gts, res, verbose=0)
    assert bleu([c for c, _ in items], [r for _, r in items]) == pytest.approx(their_bleu, abs=1e-9)
    their_rouge, per_item = rouge_module.Rouge().compute_score(gts, res)
    ours = [rouge_l(c, refs) for c, refs in items]
    assert ours == pytest.approx(list(per_item), abs=1e-9)
    assert rouge_l("", ["a dog"]) == 0.0 and rouge_l("a dog", ["a dog"]) == pytest.approx(1.0)
