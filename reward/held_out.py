"""Held-out scores of greedy answers, for both tasks, from the items `eval/step-N.json` holds.

Questions (items with choices) get MMAU's official metric (`reward/mmau.py`); captions (items with
references) get CIDEr-D, BLEU-4 and ROUGE-L (`reward/captions.py`), CIDEr-D with the held-out set's
own references as its corpus, as the COCO caption tools score a test split, and the reward models'
mean score where the items carry one (`similarity_<kind>`). `total` is the headline
(`metric` says which): MMAU accuracy in percent when there are questions, else CIDEr-D.
"""

from __future__ import annotations

from typing import Any

from reward.captions import CiderD, bleu, rouge_l
from reward.mmau import mmau_scores, prediction_of


def caption_scores(items: list[dict[str, Any]]) -> dict[str, float]:
    """CIDEr-D, BLEU-4 and ROUGE-L (means over the items; BLEU over the corpus) of the predictions."""
    predictions = [prediction_of(item) or "" for item in items]
    references = [item["references"] for item in items]
    cider = CiderD(references)
    n = len(items)
    models = sorted({k for item in items for k in item if k.startswith("similarity_")})
    return {
        "cider_d": sum(cider.score(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        "bleu_4": bleu(predictions, references)[3],
        "rouge_l": sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        **{k: sum(float(item.get(k, 0.0)) for item in items) / n for k in models},  # reward models'
        "caption_n": n,
    }


def held_out_scores(items: list[dict[str, Any]]) -> dict[str, Any]:
    """MMAU's scores of the questions and the caption scores of the captions, with the headline."""
    questions = [item for item in items if item.get("choices")]
    captions = [item for item in items if not item.get("choices") and item.get("references")]
    scores = mmau_scores(questions)
    scores["metric"] = "accuracy"
    if captions:
        scores.update(caption_scores(captions))
        if not questions:
            scores["total"], scores["metric"] = scores["cider_d"], "cider_d"
    return scores


def eval_record(scores: dict[str, Any]) -> dict[str, float]:
    """The metrics.jsonl keys of held-out scores: eval_accuracy, and eval_cider_d, eval_bleu_4,
    eval_rouge_l (and each reward model's eval_similarity_<kind>) where captions were scored."""
    out = {"eval_accuracy": scores["total"]} if scores["metric"] == "accuracy" else {}
    keys = [k for k in scores if k in ("cider_d", "bleu_4", "rouge_l") or k.startswith("similarity_")]
    out.update({f"eval_{k}": scores[k] for k in keys})
    return out


def format_held_out(scores: dict[str, Any]) -> str:
    """A plain-text table: MMAU's (`format_scores`) for questions, one line for captions."""
    from reward.mmau import format_scores

    lines = [format_scores(scores)] if scores["metric"] == "accuracy" else []
    if "cider_d" in scores:
        lines.append(
            f"captions: CIDEr-D {scores['cider_d']:.3f}, BLEU-4 {scores['bleu_4']:.3f}, "
            f"ROUGE-L {scores['rouge_l']:.3f} over {scores['caption_n']} clips"
        )
    return "\n".join(lines)
