"""Loading AVQA JSON lines and MMAU JSON: every bad row is skipped, counted and named."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import SHARED_DATA, write_tone

from rollout.datasets import DataValidationError, load_questions


def avqa_row(i: int, **overrides) -> dict:
    row = {
        "id": i,
        "video_name": f"clip{i}",
        "video_id": i,
        "question_text": "What is making the sound in the video?",
        "multi_choice": ["dog", "cat", "car", "bird"],
        "answer": 2,
        "question_relation": "View",
        "question_type": "Which",
        "dataset_name": "AVQA",
        "audio_path": f"audio/clip{i}.wav",
    }
    row.update(overrides)
    return row


@pytest.fixture
def avqa_file(tmp_path):
    """Four good rows and one of every kind of bad row, audio on disk where the row needs it."""
    for i in range(20):
        write_tone(tmp_path / "audio" / f"clip{i}.wav", seconds=0.2)
    (tmp_path / "audio" / "clip10.wav").write_text("plain text, not audio")
    cut = tmp_path / "audio" / "clip11.wav"
    cut.write_bytes(cut.read_bytes()[:30])
    lines = [json.dumps(avqa_row(i)) for i in range(4)]
    bad = {
        "{not json": "not valid JSON",
        json.dumps(avqa_row(4, answer=7)): "outside the 4 choices",
        json.dumps(avqa_row(5, answer="2")): "integer index",
        json.dumps(avqa_row(6, multi_choice=["dog", "dog", "cat"])): "duplicate choices",
        json.dumps(avqa_row(7, multi_choice=["dog", " "])): "a choice is empty",
        json.dumps(avqa_row(8, multi_choice=["only"], answer=0)): "needs 2 to 8 choices",
        json.dumps(avqa_row(9, multi_choice="dog,cat")): "list of strings",
        json.dumps(avqa_row(10)): "cannot decode",
        json.dumps(avqa_row(11)): "audio",
        json.dumps(avqa_row(12, audio_path="audio/missing.wav")): "no such file",
        json.dumps(avqa_row(13, question_text="")): "question_text",
        json.dumps(avqa_row(0)): "duplicate id",
        json.dumps([1, 2]): "not a JSON object",
    }
    lines += list(bad)
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n\n")  # a blank line is not a row
    return path, list(bad.values())


def test_bad_rows_are_skipped_counted_and_named(avqa_file):
    path, reasons = avqa_file
    questions, report = load_questions(path)
    assert [q.id for q in questions] == ["0", "1", "2", "3"]
    assert questions[0].answer == "car" and questions[0].choices == ["dog", "cat", "car", "bird"]
    assert questions[0].audio_path == str(path.parent / "audio" / "clip0.wav")
    assert questions[0].meta["question_type"] == "Which"
    assert report.total == 4 + len(reasons) and report.kept == 4
    assert len(report.skipped) == len(reasons)
    for skipped, expected in zip(report.skipped, reasons, strict=True):
        assert expected in skipped.reason, (skipped, expected)
    assert [s.row for s in report.skipped] == list(range(5, 5 + len(reasons)))
    assert "4 of 17 rows kept, 13 skipped" in report.summary()


def test_strict_mode_stops_before_any_work_with_the_whole_report(avqa_file):
    path, reasons = avqa_file
    with pytest.raises(DataValidationError) as info:
        load_questions(path, strict=True)
    assert len(info.value.report.skipped) == len(reasons)
    assert "13 skipped" in str(info.value)


def test_audio_root_overrides_the_data_folder(tmp_path):
    write_tone(tmp_path / "elsewhere" / "audio" / "clip0.wav", seconds=0.2)
    (tmp_path / "meta").mkdir()
    path = tmp_path / "meta" / "train.jsonl"
    path.write_text(json.dumps(avqa_row(0)) + "\n")
    assert load_questions(path)[1].kept == 0
    assert load_questions(path, tmp_path / "elsewhere")[1].kept == 1


@pytest.mark.parametrize("version", ["v2025-01", "v05.15.25"])
def test_mmau_test_mini_loads_with_synthesised_audio(tmp_path, version):
    source = SHARED_DATA / f"mmau-test-mini-{version}.json"
    items = json.loads(source.read_text())
    root = tmp_path / "mmau"
    clip = write_tone(tmp_path / "clip.wav", seconds=0.1)
    for item in items:
        target = root / item["audio_id"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, target)
    data = root / "test-mini.json"
    shutil.copyfile(source, data)

    # Evaluation keeps MMAU's few items with repeated choices (its official score counts all 1000).
    questions, report = load_questions(data, root, allow_duplicate_choices=True)
    assert len(questions) == len(items) == 1000 and not report.skipped
    assert 20 <= len(report.warnings) <= 27
    by_id = {q.id: q for q in questions}
    first = by_id[items[0]["id"]]
    assert first.answer == items[0]["answer"] and first.choices == items[0]["choices"]
    assert first.meta["task"] in {"sound", "music", "speech"} and "difficulty" in first.meta
    assert {q.meta["task"] for q in questions} == {"sound", "music", "speech"}
    # Training-style loading refuses them, with the reason.
    _, strict_report = load_questions(data, root, check_audio=False)
    assert len(strict_report.skipped) == len(report.warnings)
    assert all("duplicate choices" in s.reason for s in strict_report.skipped)


def test_mmau_answer_not_among_choices_is_skipped(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=0.1)
    items = [
        {"id": "ok", "audio_id": "./a.wav", "question": "Q?", "choices": ["x", "y"], "answer": "x"},
        {"id": "bad", "audio_id": "./a.wav", "question": "Q?", "choices": ["x", "y"], "answer": "z"},
        {"id": "nine", "audio_id": "./a.wav", "question": "Q?", "choices": list("abcdefghi"), "answer": "a"},
    ]
    (tmp_path / "m.json").write_text(json.dumps(items))
    questions, report = load_questions(tmp_path / "m.json")
    assert [q.id for q in questions] == ["ok"]
    assert "'z' is not among the choices" in report.skipped[0].reason
    assert "needs 2 to 8 choices, has 9" in report.skipped[1].reason


def test_the_format_comes_from_the_content_whatever_the_suffix(avqa_file, tmp_path):
    """R1-AQA's training file is JSON lines named `train_r1aqa_line.json`."""
    from rollout.datasets import DataFormatError, detect_format

    path, _ = avqa_file
    renamed = path.with_name("train_r1aqa_line.json")
    renamed.write_text(path.read_text())
    assert detect_format(renamed) == "avqa"
    by_suffix, _ = load_questions(path)
    by_content, _ = load_questions(renamed)
    assert [q.id for q in by_content] == [q.id for q in by_suffix] and by_content
    (tmp_path / "list.jsonl").write_text("  \n[]")
    assert detect_format(tmp_path / "list.jsonl") == "mmau"
    for name, text in {"empty.json": " \n", "csv.json": "id,question\n1,q"}.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataFormatError, match=r"empty data file|not a JSON list \(MMAU\), JSON lines"):
            detect_format(tmp_path / name)
