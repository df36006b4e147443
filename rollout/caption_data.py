"""Caption data in its three forms, read into the rows `rollout.datasets` validates.

- Clotho: a CSV `file_name,caption_1,...,caption_5`, the clips in a folder beside it (data.audio_root).
- AudioCaps: a CSV `audiocap_id,youtube_id,start_time,caption`, one row per caption (5 per clip in
  val/test): rows of one clip (youtube_id, start_time) are joined. Its audio is not distributed
  with it; a clip is looked for as `{youtube_id}_{start_time}`, `Y{youtube_id}`, `{youtube_id}` or
  `{audiocap_id}` with .wav, .flac or .mp3 under the audio root (the first that exists).
- JSON lines: `{"audio": path, "references": [...]}` (optional "id" and "question"; other fields
  are kept as meta).
Each reader yields (row number, row dict or None, why it could not be read), as the question readers do.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rollout.question import CAPTION_QUESTION, AudioQuestion, ChoiceError, RowError, validate_references

Row = tuple[int, Any, str | None]
CLOTHO_COLUMNS = ("file_name", "caption_1")
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")


def csv_kind(header: str) -> str | None:
    """ "clotho" or "audiocaps" from a CSV's first line, else None."""
    columns = next(csv.reader([header]), [])
    if all(c in columns for c in CLOTHO_COLUMNS):
        return "clotho"
    if all(c in columns for c in AUDIOCAPS_COLUMNS):
        return "audiocaps"
    return None


def read_clotho(path: Path) -> Iterator[Row]:
    """One row per clip: its file name and its non-empty caption_N columns."""
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):  # line 1 is the header
            captions = [v for k, v in row.items() if k and k.startswith("caption_") and v and v.strip()]
            name = row.get("file_name") or ""
            yield number, {"id": name, "audio": name, "references": captions, "source": "clotho"}, None


def read_audiocaps(path: Path, audio_root: Path) -> Iterator[Row]:
    """One row per clip (its captions joined, numbered by its first line)."""
    clips: dict[tuple[str, str], dict] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            key = (row.get("youtube_id") or "", row.get("start_time") or "")
            clip = clips.setdefault(key, {"number": number, "ids": [], "references": []})
            clip["ids"].append(row.get("audiocap_id") or "")
            if (row.get("caption") or "").strip():
                clip["references"].append(row["caption"])
    for (youtube_id, start), clip in clips.items():
        stems = [f"{youtube_id}_{start}", f"Y{youtube_id}", youtube_id, *clip["ids"]]
        candidates = [stem + suffix for stem in stems if stem for suffix in AUDIO_SUFFIXES]
        found = next(
            (c for c in candidates if (audio_root / c).exists()), candidates[0] if candidates else ""
        )
        row = {"id": f"{youtube_id}_{start}", "audio": found, "references": clip["references"]}
        yield clip["number"], {**row, "source": "audiocaps", "start_time": start}, None


def caption_row_to_question(row: dict, audio_root: Path) -> AudioQuestion:
    """One caption row -> an AudioQuestion with no choices and its references."""
    audio = row.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        raise RowError("field 'audio' must be a non-empty string (the clip's path)")
    try:
        references = validate_references(row.get("references"))
    except ChoiceError as err:
        raise RowError(str(err)) from None
    question = row.get("question", CAPTION_QUESTION)
    if not isinstance(question, str) or not question.strip():
        raise RowError("field 'question' must be a non-empty string when given")
    meta = {k: v for k, v in row.items() if k not in ("audio", "references", "question")}
    return AudioQuestion(
        id=str(row.get("id", audio)),
        audio_path=str(audio_root / audio),
        question=question,
        choices=[],
        answer="",
        meta=meta,
        references=references,
    )
