"""The synthetic task: deterministic, balanced, and answerable only from the audio."""

from __future__ import annotations

import collections
import json

import numpy as np

from assets.synthetic import TASKS, make_dataset
from rollout.audio import SAMPLE_RATE, load_audio
from rollout.datasets import load_questions


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_in_avqa_form_load_without_a_skipped_row(synthetic_data_dir):
    for name in ("train.jsonl", "test.jsonl", "test-mmau.json"):
        questions, report = load_questions(synthetic_data_dir / name, strict=True)
        assert questions and not report.skipped
    row = rows(synthetic_data_dir / "train.jsonl")[0]
    assert set(row) == {
        "id",
        "video_name",
        "video_id",
        "question_text",
        "multi_choice",
        "answer",
        "question_relation",
        "question_type",
        "dataset_name",
        "audio_path",
    }
    assert isinstance(row["answer"], int) and 2 <= len(row["multi_choice"]) <= 4


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = make_dataset(tmp_path / "a", n=20, seed=3)
    b = make_dataset(tmp_path / "b", n=20, seed=3)
    make_dataset(tmp_path / "c", n=20, seed=4)
    assert a["train"].read_text() == b["train"].read_text()
    assert (tmp_path / "a/audio/train-000001.wav").read_bytes() == (
        tmp_path / "b/audio/train-000001.wav"
    ).read_bytes()
    assert (tmp_path / "a/audio/train-000001.wav").read_bytes() != (
        tmp_path / "c/audio/train-000001.wav"
    ).read_bytes()


def test_answers_balanced_across_classes_and_positions(tmp_path):
    paths = make_dataset(tmp_path, n=800, seed=1, test_fraction=0.1)
    data = rows(paths["train"])
    for task in TASKS.values():
        mine = [r for r in data if r["question_type"] == task.name]
        classes = collections.Counter(r["multi_choice"][r["answer"]] for r in mine)
        assert set(classes) == set(task.classes)
        assert max(classes.values()) - min(classes.values()) <= 1, classes
    # Text-only shortcut: always picking the same position is at chance for every choice count.
    for n_choices in (2, 3, 4):
        group = [r for r in data if len(r["multi_choice"]) == n_choices]
        positions = collections.Counter(r["answer"] for r in group)
        best_fixed_position = max(positions.values()) / len(group)
        assert best_fixed_position < 1 / n_choices + 0.12, (n_choices, positions)
    # The question text is the same for every item of a task: it tells nothing about the answer.
    assert len({r["question_text"] for r in data}) == len(TASKS)


def spectral_centroid(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1 / SAMPLE_RATE)
    return float((spectrum * freqs).sum() / spectrum.sum())


def test_the_audio_decides_the_answer(tmp_path):
    """Simple signal measures separate every task's classes perfectly: the answer is in the audio."""
    paths = make_dataset(tmp_path, n=200, seed=2)
    measures = {
        "pitch": lambda w: spectral_centroid(w) > 1000,
        "timbre": lambda w: spectral_centroid(w) > 3500,  # white noise spreads to 4 kHz on average
        "loudness": lambda w: np.abs(w).max() > 0.2,
        "compare": lambda w: spectral_centroid(w[: len(w) // 3]) > spectral_centroid(w[-len(w) // 3 :]),
    }
    truth = {"pitch": "high", "timbre": "noise", "loudness": "loud", "compare": "first"}
    for row in rows(paths["train"]):
        wave = load_audio(tmp_path / row["audio_path"])
        answer = row["multi_choice"][row["answer"]]
        task = row["question_type"]
        if task == "count":
            envelope = (
                np.abs(wave[: len(wave) // 160 * 160]).reshape(-1, 160).max(axis=1) > 0.05
            )  # 10 ms frames
            onsets = int(np.sum(envelope[1:] & ~envelope[:-1]) + envelope[0])
            assert onsets == ["one", "two", "three", "four"].index(answer) + 1
        else:
            assert measures[task](wave) == (answer == truth[task]), row


def test_out_of_distribution_split_is_worded_and_sounds_otherwise(tmp_path):
    """`ood`: a test split as MMAU is to AVQA (other question wording, other sound ranges); the
    other splits stay byte for byte what they are without it."""
    plain = make_dataset(tmp_path / "plain", n=80, seed=4, tasks=["pitch"])
    paths = make_dataset(tmp_path / "ood", n=80, seed=4, tasks=["pitch"], ood=True)
    assert paths["train"].read_text() == plain["train"].read_text()
    assert paths["test-mmau"].read_text() == plain["test-mmau"].read_text()
    shifted = rows(paths["test-ood"])
    assert (
        len(shifted) == len(rows(paths["test"])) and len(json.loads(paths["test-ood-mmau"].read_text())) == 10
    )
    assert {r["question_text"] for r in shifted} == {TASKS["pitch"].ood_question} != {TASKS["pitch"].question}
    for row in shifted:
        wave = load_audio(tmp_path / "ood" / row["audio_path"])
        centroid, seconds = spectral_centroid(wave), len(wave) / SAMPLE_RATE
        high = row["multi_choice"][row["answer"]] == "high"
        assert (1000 < centroid < 1400) if high else (400 < centroid < 600), (
            centroid
        )  # trained: ~2000 / ~300 Hz
        assert 2.0 <= seconds <= 3.0
