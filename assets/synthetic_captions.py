"""A synthetic caption set whose right words depend on the audio (the learnable caption task).

Each clip is one tone, high (near 2000 Hz) or low (near 300 Hz), 0.5 to 2 s long, at a random
loudness. Its five references describe its pitch in varied wording, drawn from `TEMPLATES` with
synonyms, so no single caption is the answer and CIDEr-D rewards the words the audio decides
("high", "deep", ...) over the ones every caption shares ("a", "tone"). Classes are balanced. (A
first version also described loudness in every caption; the tiny policy did not find the two-word
mapping within 80 steps, so the learnable part is the pitch, as in the pitch question task.)
Output: OUT/train.jsonl and OUT/test.jsonl as caption JSON lines
(`{"id", "audio", "references"}`), the clips under OUT/audio/.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from assets.synthetic import _tone
from rollout.audio import SAMPLE_RATE

PITCH = {"high": ["high", "high pitched", "sharp"], "low": ["low", "low pitched", "deep"]}
TEMPLATES = [
    "a {pitch} tone",
    "the sound is a {pitch} beep",
    "a {pitch} pure tone plays",
    "one {pitch} note",
    "someone plays a {pitch} tone",
    "a tone that is {pitch}",
    "a single {pitch} sound",
]


def references_for(rng: np.random.Generator, pitch: str, count: int = 5) -> list[str]:
    """`count` captions of one clip, each from another template, synonyms drawn at random."""
    templates = rng.permutation(len(TEMPLATES))[:count]
    return [TEMPLATES[t].format(pitch=rng.choice(PITCH[pitch])) for t in templates]


def render(rng: np.random.Generator, pitch: str) -> np.ndarray:
    freq = (2000.0 if pitch == "high" else 300.0) * rng.uniform(0.9, 1.1)
    return _tone(rng, freq, rng.uniform(0.5, 2.0), rng.uniform(0.05, 0.9))


def make_caption_items(n: int, seed: int, split: str, audio_dir: Path) -> list[dict]:
    """Render `n` clips and return their caption rows (audio paths relative to audio_dir's parent)."""
    import soundfile as sf  # here, not at import: the tiny builders import this module without it

    rng = np.random.default_rng(seed)
    audio_dir.mkdir(parents=True, exist_ok=True)
    classes = list(PITCH)
    rows = []
    for i in range(n):
        pitch = classes[i % len(classes)]
        name = f"{split}-caption-{i:06d}"
        sf.write(audio_dir / f"{name}.wav", render(rng, pitch).astype(np.float32), SAMPLE_RATE)
        rows.append(
            {
                "id": name,
                "audio": f"{audio_dir.name}/{name}.wav",
                "references": references_for(rng, pitch),
                "pitch": pitch,
            }
        )
    return [rows[j] for j in rng.permutation(n)]


def make_caption_dataset(out_dir: str | Path, n: int, seed: int = 0, test_fraction: float = 0.125) -> dict:
    """Write train.jsonl, test.jsonl and the WAVs under `out_dir`; returns the files' paths."""
    if n < 2:
        raise ValueError("--n must be at least 2 (one train and one test item)")
    out = Path(out_dir)
    n_test = max(1, round(n * test_fraction))
    paths = {}
    for offset, (split, count) in enumerate({"train": n - n_test, "test": n_test}.items()):
        rows = make_caption_items(count, seed * 1000 + 500 + offset, split, out / "audio")
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths
