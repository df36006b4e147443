"""The caption task beside multiple choice: Clotho, AudioCaps and JSON-lines caption data (bad rows
reported and skipped), the caption prompt, the CIDEr-D reward with the training corpus's
statistics, `audio-grpo reward --task caption`, held-out caption scores and the synthetic set."""

from __future__ import annotations

import csv
import json
import random

import pytest
from helpers import run_cli, write_tone

from assets.synthetic_captions import PITCH, make_caption_dataset
from assets.warm_start import random_answer
from learner.grpo_step import caption_statistics
from reward.captions import CiderD
from reward.held_out import eval_record, held_out_scores
from reward.rewards import RewardScorer, RewardWeights, summarize_scores
from rollout.datasets import DataFormatError, detect_format, load_questions
from rollout.prompt import prompt_text
from rollout.question import CAPTION_QUESTION


def _csv(path, header, rows) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_clotho_csv_loads_one_item_per_clip_and_skips_bad_rows(tmp_path):
    for name in ("dog, barking.wav", "rain.wav", "empty.wav"):
        write_tone(tmp_path / "development" / name, seconds=0.2)
    header = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
    rows = [
        ["dog, barking.wav", "A dog barks.", "A dog barks twice.", "Barking", "A dog", "Dog barks loudly"],
        ["rain.wav", "Rain falls.", "", "Rain on a roof.", "Rain", "Heavy rain"],  # one empty caption
        ["empty.wav", "", "", "", "", ""],
        ["missing.wav", "Wind.", "Wind blows.", "Wind", "Gusts", "Wind howls"],
    ]
    _csv(tmp_path / "clotho_captions_development.csv", header, rows)
    path = tmp_path / "clotho_captions_development.csv"
    assert detect_format(path) == "clotho"
    items, report = load_questions(path, tmp_path / "development")
    assert [q.id for q in items] == ["dog, barking.wav", "rain.wav"]
    assert items[0].task == "caption" and items[0].choices == [] and items[0].question == CAPTION_QUESTION
    assert items[1].references == ["Rain falls.", "Rain on a roof.", "Rain", "Heavy rain"]
    assert items[0].target == items[0].references
    reasons = {s.id: s.reason for s in report.skipped}
    assert "at least one caption" in reasons["empty.wav"] and "no such file" in reasons["missing.wav"]


def test_audiocaps_csv_joins_a_clips_rows_and_finds_its_audio(tmp_path):
    write_tone(tmp_path / "audio" / "abc_30.wav", seconds=0.2)
    write_tone(tmp_path / "audio" / "Yxyz.flac", seconds=0.2)
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    rows = [[i, "abc", 30, f"a man speaks {i}"] for i in range(5)]
    rows += [[10 + i, "xyz", 0, f"birds chirp {i}"] for i in range(5)] + [[20, "nop", 5, "no audio"]]
    _csv(tmp_path / "val.csv", header, rows)
    assert detect_format(tmp_path / "val.csv") == "audiocaps"
    items, report = load_questions(tmp_path / "val.csv", tmp_path / "audio")
    assert [(q.id, len(q.references)) for q in items] == [("abc_30", 5), ("xyz_0", 5)]
    assert items[1].audio_path.endswith("Yxyz.flac")
    assert [s.id for s in report.skipped] == ["nop_5"] and "audio" in report.skipped[0].reason


def test_caption_json_lines_mix_with_questions_and_bad_references_are_named(tmp_path):
    for i in range(3):
        write_tone(tmp_path / f"{i}.wav", seconds=0.2)
    rows = [
        {"id": "c0", "audio": "0.wav", "references": ["a high tone", "a beep"]},
        {
            "id": "q1",
            "audio_path": "1.wav",
            "question_text": "High?",
            "multi_choice": ["a", "b"],
            "answer": 0,
        },
        {"id": "c2", "audio": "2.wav", "references": "a dog"},
        {"id": "c3", "audio": "2.wav", "references": []},
        {"id": "c4", "references": ["x"]},
        {"id": "c5", "audio": "2.wav", "references": ["x"], "question": "Caption it briefly."},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, report = load_questions(path)
    assert [(q.id, q.task) for q in items] == [("c0", "caption"), ("q1", "choice"), ("c5", "caption")]
    assert items[2].question == "Caption it briefly." and items[1].target == "a"
    reasons = {s.id: s.reason for s in report.skipped}
    assert "list of strings" in reasons["c2"] and "at least one caption" in reasons["c3"]
    assert "'audio'" in reasons["c4"]


def test_a_csv_of_neither_kind_is_refused_by_name(tmp_path):
    (tmp_path / "other.csv").write_text("name,label\nx,y\n")
    with pytest.raises(DataFormatError, match="Clotho/AudioCaps"):
        load_questions(tmp_path / "other.csv")


def test_the_caption_prompt_asks_for_the_answer_tag_as_questions_do():
    assert prompt_text(CAPTION_QUESTION, []) == (
        "Describe the audio in one sentence. Output the final answer in <answer> </answer>."
    )
    assert "<think> </think>" in prompt_text(CAPTION_QUESTION, [], thinking=True)


def test_cider_d_reward_with_the_corpus_statistics_and_the_format_reward():
    corpus = [["a dog barks", "a dog is barking"], ["rain falls on a roof", "heavy rain"], ["a car passes"]]
    cider = CiderD(corpus)
    scorer = RewardScorer(RewardWeights(cider_d=2.0, format=1.0), cider=cider)
    responses = ["<answer>a dog barks loudly</answer>", "a dog barks loudly", "<answer>heavy rain</answer>"]
    scores = scorer.score(responses, [corpus[0], corpus[0], corpus[0]])
    expected = cider.score("a dog barks loudly", corpus[0])
    assert expected > 0 and scores[0].cider_d == pytest.approx(expected) == scores[1].cider_d
    assert scores[0].total == pytest.approx(2 * expected + 1) and scores[1].total == pytest.approx(
        2 * expected
    )
    assert scores[2].cider_d == 0.0 and scores[0].accuracy is None
    summary = summarize_scores(scores)
    assert "accuracy" not in summary and summary["cider_d"] == pytest.approx((2 * expected) / 3)
    # Questions and captions in one batch: each scored by its own rule.
    mixed = scorer.score(["<answer>high</answer>", responses[0]], ["high", corpus[0]])
    assert mixed[0].accuracy == 1.0 and mixed[1].cider_d == pytest.approx(expected)
    with pytest.raises(ValueError, match="training corpus"):
        RewardScorer().score(responses[:1], [corpus[0]])


def test_reward_command_scores_captions_against_a_corpus_file(tmp_path):
    paths = make_caption_dataset(tmp_path, n=16, seed=3)
    items, _ = load_questions(paths["train"])
    cider = caption_statistics(items)
    lines = [
        {"response": f"<answer>{items[0].references[0]}</answer>", "references": items[0].references},
        {"response": "a tone", "references": items[1].references},
        {"response": "no references"},
    ]
    result = run_cli(
        "reward", "--task", "caption", "--corpus", str(paths["train"]),
        stdin="".join(json.dumps(x) + "\n" for x in lines),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert out[0]["cider_d"] == pytest.approx(cider.score(items[0].references[0], items[0].references))
    assert out[0]["format"] == 1.0 and out[1]["format"] == 0.0
    assert "line 3" in out[2]["error"] and "references" in out[2]["error"]
    refused = run_cli("reward", "--task", "caption", stdin="")
    assert refused.returncode != 0 and "--corpus" in refused.stderr


def test_held_out_scores_of_captions_and_of_a_mixed_set():
    refs = [["a dog barks", "a dog is barking"], ["heavy rain", "rain falls"]]
    captions = [
        {"id": "0", "choices": [], "references": refs[0], "model_output": "a dog barks"},
        {"id": "1", "choices": [], "references": refs[1], "model_output": "a dog barks"},
    ]
    scores = held_out_scores(captions)
    assert scores["metric"] == "cider_d" and scores["total"] == scores["cider_d"] > 0
    assert 0 < scores["rouge_l"] < 1 and scores["caption_n"] == 2
    assert set(eval_record(scores)) == {"eval_cider_d", "eval_bleu_4", "eval_rouge_l"}
    question = {"id": "q", "choices": ["high", "low"], "answer": "high", "model_output": "high"}
    mixed = held_out_scores([question, *captions])
    assert mixed["metric"] == "accuracy" and mixed["total"] == 100.0 and mixed["n"] == 1
    assert mixed["cider_d"] == scores["cider_d"] and "eval_accuracy" in eval_record(mixed)


def test_synthetic_captions_vary_their_wording_and_name_what_the_audio_decides(tmp_path):
    paths = make_caption_dataset(tmp_path, n=64, seed=0)
    items, report = load_questions(paths["train"])
    assert report.kept == 56 and not report.skipped
    assert sorted(q.meta["pitch"] for q in items) == ["high"] * 28 + ["low"] * 28
    for q in items:
        assert len(set(q.references)) == 5
        words = [set(r.split()) for r in q.references]
        other = next(p for p in PITCH if p != q.meta["pitch"])
        assert all(w & set(" ".join(PITCH[q.meta["pitch"]]).split()) for w in words)
        assert not any(w & set(PITCH[other]) - {"pitched"} for w in words)
    # The warm start's caption target: a reference of some clip, not necessarily this one's.
    picked = random_answer(random.Random(0), items[0], items)
    assert any(picked in q.references for q in items)


def test_retrieval_metrics_of_a_perfect_a_constant_and_a_reversed_model():
    from reward.retrieval import chance_level, retrieval_metrics

    clip_of_text = [0, 0, 1, 1, 2, 2]
    perfect = [[1.0 if a == c else 0.0 for a in range(3)] for c in clip_of_text]
    assert set(retrieval_metrics(perfect, clip_of_text).values()) == {100.0}
    constant = retrieval_metrics([[0.5] * 3 for _ in clip_of_text], clip_of_text)  # ties count against
    assert constant["t2a_R1"] == 0.0 and constant["t2a_R5"] == 100.0 and constant["a2t_R1"] == 0.0
    reversed_ = retrieval_metrics([[-v for v in row] for row in perfect], clip_of_text)
    assert reversed_["t2a_R1"] == 0.0 and reversed_["t2a_mAP10"] == pytest.approx(100 / 3)
    assert chance_level(136, 5)["t2a_R10"] == pytest.approx(1000 / 136)
