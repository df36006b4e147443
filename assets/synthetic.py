"""A synthetic audio QA set whose answers truly depend on the audio (the learnable task).

Every task asks the same question text for every clip and offers the same choice set, so the
text alone carries no information: only the audio decides. Answers are balanced across classes
and across choice positions, so neither "always the first option" nor "always 'high'" beats chance.

Tasks (sounds at 16 kHz, 0.5 to 2 s unless said):
- pitch:    "Is the tone high or low?"            sine near 300 Hz or near 2000 Hz
- compare:  "Which tone is higher, ...?"          two tones an octave or more apart
- count:    "How many beeps are there?"           1 to 4 short beeps, 2 to 4 choices
- timbre:   "Is this a pure tone or noise?"       sine or white noise
- loudness: "Is the sound loud or quiet?"         amplitude 0.5-0.9 or 0.01-0.04

Output, in AVQA's JSON-lines form (R1-AQA's training format): OUT/train.jsonl, OUT/test.jsonl,
clips under OUT/audio/; and the test split again in MMAU's form, OUT/test-mmau.json, for the
evaluation code path. With `ood`, also an out-of-distribution test split (OUT/test-ood.jsonl,
OUT/test-ood-mmau.json), as MMAU is to AVQA: each task's question worded otherwise and its sounds
drawn from other ranges (pitch: near 500 Hz / 1200 Hz and 2-3 s long; compare: closer tones;
count: higher, longer beeps; timbre: tones above 3 kHz, quieter noise; loudness: a narrower gap).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rollout.audio import SAMPLE_RATE


@dataclass(frozen=True)
class Task:
    name: str
    question: str
    classes: list[str]
    render: Callable[[np.random.Generator, str, bool], np.ndarray]  # (rng, label, shifted)
    ood_question: str = ""  # the out-of-distribution split's wording
    n_choices: tuple[int, int] = (2, 2)  # inclusive range; extra choices are other classes


def _tone(rng: np.random.Generator, freq: float, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = amplitude * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    fade = min(len(t) // 10, 160)  # 10 ms ramps: no clicks, which would add broadband energy
    if fade:
        ramp = np.linspace(0, 1, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return wave


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE))


def _pitch(rng: np.random.Generator, label: str, shifted: bool = False) -> np.ndarray:
    low, high, seconds = (500, 1200, (2.0, 3.0)) if shifted else (300, 2000, (0.5, 2.0))
    freq = (low if label == "low" else high) * rng.uniform(0.9, 1.1)
    return _tone(rng, freq, rng.uniform(*seconds), rng.uniform(0.05, 0.9))


def _compare(rng: np.random.Generator, label: str, shifted: bool = False) -> np.ndarray:
    low, high = (
        (rng.uniform(450, 650), rng.uniform(900, 1200))
        if shifted
        else (rng.uniform(200, 400), rng.uniform(1000, 3000))
    )
    first, second = (high, low) if label == "first" else (low, high)
    amplitude = rng.uniform(0.1, 0.8)
    return np.concatenate(
        [
            _tone(rng, first, rng.uniform(0.3, 0.7), amplitude),
            _silence(rng.uniform(0.1, 0.3)),
            _tone(rng, second, rng.uniform(0.3, 0.7), amplitude),
        ]
    )


COUNT_WORDS = ["one", "two", "three", "four"]


def _count(rng: np.random.Generator, label: str, shifted: bool = False) -> np.ndarray:
    beeps = COUNT_WORDS.index(label) + 1
    freq = rng.uniform(1800, 3000) if shifted else rng.uniform(600, 1500)
    amplitude, length = rng.uniform(0.2, 0.8), (0.2, 0.3) if shifted else (0.08, 0.15)
    parts = [_silence(rng.uniform(0.05, 0.2))]
    for _ in range(beeps):
        parts += [_tone(rng, freq, rng.uniform(*length), amplitude), _silence(rng.uniform(0.12, 0.25))]
    return np.concatenate(parts)


def _timbre(rng: np.random.Generator, label: str, shifted: bool = False) -> np.ndarray:
    seconds, amplitude = rng.uniform(0.5, 2.0), rng.uniform(0.1, 0.6)
    if label == "tone":
        return _tone(rng, rng.uniform(3000, 6000) if shifted else rng.uniform(200, 3000), seconds, amplitude)
    return (0.3 if shifted else 1.0) * amplitude * rng.uniform(-1, 1, int(seconds * SAMPLE_RATE))


def _loudness(rng: np.random.Generator, label: str, shifted: bool = False) -> np.ndarray:
    loud, quiet = ((0.3, 0.45), (0.05, 0.08)) if shifted else ((0.5, 0.9), (0.01, 0.04))
    amplitude = rng.uniform(*loud) if label == "loud" else rng.uniform(*quiet)
    return _tone(rng, rng.uniform(300, 2000), rng.uniform(0.5, 2.0), amplitude)


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "pitch",
            "Is the tone high or low?",
            ["high", "low"],
            _pitch,
            "Is this sound high-pitched or low-pitched?",
        ),
        Task(
            "compare",
            "Which tone is higher, the first or the second?",
            ["first", "second"],
            _compare,
            "Of the two tones, which one has the higher pitch: the first or the second?",
        ),
        Task(
            "count",
            "How many beeps are there?",
            COUNT_WORDS,
            _count,
            "Count the beeps: how many are there?",
            (2, 4),
        ),
        Task(
            "timbre",
            "Is this a pure tone or noise?",
            ["tone", "noise"],
            _timbre,
            "Is this clip a pure tone, or is it noise?",
        ),
        Task(
            "loudness",
            "Is the sound loud or quiet?",
            ["loud", "quiet"],
            _loudness,
            "How loud is this sound: loud or quiet?",
        ),
    ]
}


def _choices_for(rng: np.random.Generator, task: Task, answer: str, position: int) -> list[str]:
    """Choices with `answer` at `position` (taken modulo the number of choices)."""
    n = int(rng.integers(task.n_choices[0], task.n_choices[1] + 1))
    others = [c for c in task.classes if c != answer]
    distractors = list(rng.permutation(others)[: n - 1])
    position %= n
    return distractors[:position] + [answer] + distractors[position:]


def make_items(
    n: int, seed: int, tasks: list[str], split: str, audio_dir: Path, shifted: bool = False
) -> list[dict]:
    """Render `n` clips and return their AVQA records (audio paths relative to audio_dir's parent);
    `shifted`: the out-of-distribution wording and sounds."""
    import soundfile as sf  # here, not at import: the tiny builders read TASKS on machines without it

    rng = np.random.default_rng(seed)
    audio_dir.mkdir(parents=True, exist_ok=True)
    # Cycle (task, class, position) so classes and answer positions come out balanced.
    rows = []
    for i in range(n):
        task = TASKS[tasks[i % len(tasks)]]
        k = i // len(tasks)
        answer = task.classes[k % len(task.classes)]
        position = k // len(task.classes)  # each class visits every position in turn
        choices = _choices_for(rng, task, answer, position)
        wave = task.render(rng, answer, shifted).astype(np.float32)
        name = f"{split}-{i:06d}"
        sf.write(audio_dir / f"{name}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
        rows.append(
            {
                "id": i,
                "video_name": name,
                "video_id": i,
                "question_text": task.ood_question if shifted else task.question,
                "multi_choice": choices,
                "answer": choices.index(answer),
                "question_relation": "View",
                "question_type": task.name,
                "dataset_name": "AVQA",
                "audio_path": f"{audio_dir.name}/{name}.wav",
            }
        )
    order = rng.permutation(n)  # shuffle so a prefix of the file mixes all tasks
    return [rows[j] for j in order]


def avqa_to_mmau(row: dict) -> dict:
    """The same item in MMAU's field layout (for the evaluation path)."""
    return {
        "id": f"synthetic-{row['video_name']}",
        "audio_id": f"./{row['audio_path']}",
        "question": row["question_text"],
        "choices": row["multi_choice"],
        "answer": row["multi_choice"][row["answer"]],
        "dataset": "audio-grpo-synthetic",
        "task": "sound",
        "split": "test",
        "category": "Sound Perception",
        "sub-category": row["question_type"],
        "difficulty": "easy",
    }


def make_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    tasks: list[str] | None = None,
    test_fraction: float = 0.125,
    ood: bool = False,
) -> dict[str, Path]:
    """Write train.jsonl, test.jsonl, test-mmau.json and the WAVs under `out_dir` (with `ood` also
    test-ood.jsonl and test-ood-mmau.json, the test split's size)."""
    tasks = tasks or list(TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
    if n < 2:
        raise ValueError("--n must be at least 2 (one train and one test item)")
    out = Path(out_dir)
    n_test = max(1, round(n * test_fraction))
    splits = {"train": n - n_test, "test": n_test, **({"test-ood": n_test} if ood else {})}
    paths = {}
    for offset, (split, count) in enumerate(splits.items()):
        rows = make_items(
            count, seed * 1000 + offset, tasks, split, out / "audio", shifted=split == "test-ood"
        )
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[split] = path
    for split in [s for s in splits if s != "train"]:
        test_rows = [json.loads(line) for line in paths[split].read_text().splitlines()]
        paths[f"{split}-mmau"] = out / f"{split}-mmau.json"
        paths[f"{split}-mmau"].write_text(json.dumps([avqa_to_mmau(r) for r in test_rows], indent=1))
    return paths
