"""Load AVQA JSON lines and MMAU JSON (questions), and Clotho CSV, AudioCaps CSV and caption JSON
lines (`rollout/caption_data.py`), into validated `AudioQuestion`s.

Every row is checked before any training or evaluation starts: parseable, the right types, 2 to 8
non-empty distinct choices, the answer among them (a caption: at least one non-empty reference),
and audio that exists and decodes. By default
bad rows are skipped, counted and listed in one `ValidationReport`; with `strict=True` the load
raises `DataValidationError` (carrying the report) before any work starts. Nothing fails mid-run
because of a bad row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rollout.audio import AudioError, load_audio
from rollout.caption_data import caption_row_to_question, csv_kind, read_audiocaps, read_clotho
from rollout.question import AudioQuestion, ChoiceError, RowError, validate_choices

# avqa: JSON lines, each row an AVQA question or (with "references") a caption item.
DataFormat = Literal["avqa", "mmau", "clotho", "audiocaps"]


class DataValidationError(ValueError):
    """Raised in strict mode when any row is invalid; `.report` lists every bad row."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


class DataFormatError(ValueError):
    """The file is neither of the two forms (or empty): nothing in it can be read."""


@dataclass
class SkippedRow:
    row: int  # 1-based line (JSON lines) or item index (JSON array)
    id: str | None
    reason: str


@dataclass
class ValidationReport:
    source: str
    total: int = 0
    kept: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)
    warnings: list[SkippedRow] = field(default_factory=list)  # kept, but worth knowing

    def summary(self, max_listed: int = 20) -> str:
        lines = [
            f"{self.source}: {self.kept} of {self.total} rows kept, {len(self.skipped)} skipped"
            + (f", {len(self.warnings)} kept with warnings" if self.warnings else "")
        ]
        for label, rows in (("skipped", self.skipped), ("warning", self.warnings)):
            for bad in rows[:max_listed]:
                lines.append(f"  {label}: row {bad.row} (id {bad.id}): {bad.reason}")
            if len(rows) > max_listed:
                lines.append(f"  ... and {len(rows) - max_listed} more {label}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "total": self.total,
            "kept": self.kept,
            "skipped": [vars(s) for s in self.skipped],
            "warnings": [vars(s) for s in self.warnings],
        }


def _choices(choices: Any, allow_duplicates: bool) -> list[str]:
    try:
        return validate_choices(choices, allow_duplicates=allow_duplicates)
    except ChoiceError as err:
        raise RowError(str(err)) from None


def _check_text(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"field '{key}' must be a non-empty string")
    return value


def avqa_row_to_question(row: Any, audio_root: Path, allow_duplicates: bool = False) -> AudioQuestion:
    """One AVQA/R1-AQA JSON-lines record -> AudioQuestion (answer is an index into multi_choice);
    a record with "references" is a caption item (`caption_row_to_question`)."""
    if not isinstance(row, dict):
        raise RowError("row is not a JSON object")
    if "references" in row:
        return caption_row_to_question(row, audio_root)
    choices = _choices(row.get("multi_choice"), allow_duplicates)
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise RowError("field 'answer' must be an integer index into multi_choice")
    if not 0 <= answer < len(choices):
        raise RowError(f"answer index {answer} is outside the {len(choices)} choices")
    extra = {k: v for k, v in row.items() if k not in ("question_text", "multi_choice", "answer")}
    return AudioQuestion(
        id=str(row.get("id", "")),
        audio_path=str(audio_root / _check_text(row, "audio_path")),
        question=_check_text(row, "question_text"),
        choices=choices,
        answer=choices[answer],
        meta=extra,
    )


def mmau_row_to_question(row: Any, audio_root: Path, allow_duplicates: bool = False) -> AudioQuestion:
    """One MMAU item -> AudioQuestion (answer is the choice's text; audio under `audio_id`)."""
    if not isinstance(row, dict):
        raise RowError("item is not a JSON object")
    choices = _choices(row.get("choices"), allow_duplicates)
    answer = _check_text(row, "answer")
    if answer not in choices:
        raise RowError(f"answer {answer!r} is not among the choices {choices}")
    audio_id = _check_text(row, "audio_id")
    keep = {k: v for k, v in row.items() if k not in ("question", "choices", "answer")}
    return AudioQuestion(
        id=str(row.get("id", "")),
        audio_path=str(audio_root / audio_id),
        question=_check_text(row, "question"),
        choices=choices,
        answer=answer,
        meta=keep,
    )


def detect_format(path: Path) -> DataFormat:
    """From the content, whatever the suffix: a JSON list is MMAU's form, one JSON object per line is
    AVQA's (R1-AQA's own training file, `train_r1aqa_line.json`, is JSON lines; caption rows too),
    a CSV with Clotho's or AudioCaps' header is theirs."""
    with path.open(encoding="utf-8") as handle:
        while True:
            block = handle.read(4096)
            if not block:
                raise DataFormatError(f"{path}: empty data file")
            start = block.lstrip()
            if start:
                break
    if start[0] == "[":
        return "mmau"
    if start[0] == "{":
        return "avqa"
    kind = csv_kind(start.splitlines()[0])
    if kind:
        return kind  # type: ignore[return-value]
    raise DataFormatError(
        f"{path}: not a JSON list (MMAU), JSON lines (AVQA, captions) or a Clotho/AudioCaps CSV: "
        f"starts with {start[:20]!r}"
    )


def _read_rows(path: Path, fmt: DataFormat, audio_root: Path) -> Iterable[tuple[int, Any, str | None]]:
    """Yield (row number, parsed row or None, parse error or None)."""
    if fmt == "clotho":
        yield from read_clotho(path)
    elif fmt == "audiocaps":
        yield from read_audiocaps(path, audio_root)
    elif fmt == "avqa":
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line), None
                except json.JSONDecodeError as err:
                    yield number, None, f"not valid JSON ({err.msg})"
    else:
        items = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(items, list):
            raise DataValidationError(
                ValidationReport(str(path), skipped=[SkippedRow(0, None, "not a JSON list")])
            )
        for number, item in enumerate(items, start=1):
            yield number, item, None


def _caption_row(row: Any, audio_root: Path, _allow_duplicates: bool = False) -> AudioQuestion:
    return caption_row_to_question(row, audio_root)


def _audio_problem(path: str) -> str | None:
    try:
        load_audio(path)
    except AudioError as err:
        return f"audio: {err.reason} ({path})"
    return None


def load_questions(
    path: str | Path,
    audio_root: str | Path | None = None,
    *,
    fmt: DataFormat | None = None,
    strict: bool = False,
    check_audio: bool = True,
    allow_duplicate_choices: bool = False,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[AudioQuestion], ValidationReport]:
    """Load and validate a data file; return the good questions and the report of the bad rows.

    `fmt` is detected from the content when not given (`detect_format`: a JSON list is MMAU, JSON
    lines are AVQA or caption rows, a CSV is Clotho's or AudioCaps', whatever the suffix). Audio paths
    resolve under `audio_root` (default: the data file's folder). `check_audio` decodes every clip
    once (in `workers` threads) so that a corrupt file is caught here rather than mid-run.
    `allow_duplicate_choices` keeps rows whose choices repeat (listed as warnings): MMAU test-mini
    has 20 to 27 such items and its official score counts all 1000, so evaluation keeps them.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    root = Path(audio_root) if audio_root is not None else path.parent
    convert = {"avqa": avqa_row_to_question, "mmau": mmau_row_to_question}.get(fmt, _caption_row)
    report = ValidationReport(source=str(path))
    candidates: list[tuple[int, AudioQuestion]] = []
    seen_ids: set[str] = set()
    for number, row, parse_error in _read_rows(path, fmt, root):
        report.total += 1
        row_id = str(row.get("id")) if isinstance(row, dict) and "id" in row else None
        try:
            if parse_error:
                raise RowError(parse_error)
            question = convert(row, root, allow_duplicate_choices)
            if len(set(question.choices)) != len(question.choices):
                report.warnings.append(
                    SkippedRow(number, question.id, f"duplicate choices {question.choices}")
                )
            if question.id in seen_ids:
                raise RowError(f"duplicate id {question.id!r}")
            seen_ids.add(question.id)
            candidates.append((number, question))
        except RowError as err:
            report.skipped.append(SkippedRow(number, row_id, str(err)))

    problems: list[str | None] = [None] * len(candidates)
    if check_audio and candidates:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, problem in enumerate(pool.map(_audio_problem, [q.audio_path for _, q in candidates])):
                problems[i] = problem
                if progress:
                    progress(i + 1, len(candidates))
    kept = []
    for (number, question), problem in zip(candidates, problems, strict=True):
        if problem:
            report.skipped.append(SkippedRow(number, question.id, problem))
        else:
            kept.append(question)
    report.skipped.sort(key=lambda s: s.row)
    report.kept = len(kept)
    if strict and report.skipped:
        raise DataValidationError(report)
    return kept, report


class EpochSampler:
    """Shuffled passes over a data set of `size` items, a new order each epoch from (seed, epoch).

    Its whole state is `position` (items handed out so far): a run that saves it resumes on exactly
    the questions it would have seen next.
    """

    def __init__(self, size: int, seed: int, position: int = 0):
        if size <= 0:
            raise ValueError("cannot sample from an empty data set")
        self.size, self.seed, self.position = size, seed, position
        self._order: tuple[int, list[int]] | None = None  # (epoch, permutation), the one in use

    def take(self, count: int) -> list[int]:
        """The next `count` item indices (crossing into the next epoch when this one runs out)."""
        picked = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.size)
            if self._order is None or self._order[0] != epoch:
                self._order = (
                    epoch,
                    np.random.default_rng(self.seed + epoch).permutation(self.size).tolist(),
                )
            picked.append(self._order[1][offset])
            self.position += 1
        return picked
