"""Read VAU-Bench annotation CSVs exactly, into :class:`Annotation` rows.

Conventions of the released files (see docs/data.md):
- ``-1`` in the question columns means the video has no question; ``-1`` start/end means the interval is unknown.
- Normal clips have start = end = 0.0 and class ``Normal``.
- Train/val names carry a source prefix (``msad_``, ``ucf_``, ``ecva_``); per-source test files do not.
- A few rows store the option text ("D. Green trash bin ...") instead of the letter.
- The Reasoning column is markdown in some sources and a Python-dict-like string in others.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = (
    "Video Name", "Question", "Option 1", "Option 2", "Option 3", "Option 4", "Correct Option",
    "Key Object", "Description", "Reasoning", "Anomaly Class", "Start Time", "End Time",
)
LETTERS = ("A", "B", "C", "D")
SOURCES = ("msad", "ucf", "ecva")
MISSING = "-1"


class AnnotationError(ValueError):
    """A malformed annotation file; the message names file, row and column."""


@dataclass(frozen=True)
class Annotation:
    """One annotation row, normalised.

    Attributes:
        video: the file name exactly as in ``Video Name``.
        row: 1-based line number in the CSV (the header is line 1), for error messages.
        source: ``msad`` / ``ucf`` / ``ecva`` from the name prefix, else the file's default source or "".
        question, options, answer: the multiple-choice question, or None / () / None where absent.
        interval: (start, end) in seconds; None when unknown; (0.0, 0.0) for normal clips.
    """

    video: str
    row: int
    source: str = ""
    question: str | None = None
    options: tuple[str, ...] = ()
    answer: str | None = None
    key_object: str = ""
    description: str = ""
    reasoning: str = ""
    anomaly_class: str = ""
    interval: tuple[float, float] | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_normal(self) -> bool:
        return self.anomaly_class == "Normal"

    @property
    def has_question(self) -> bool:
        return self.question is not None and self.answer is not None and len(self.options) == 4


def source_of(video: str, default: str = "") -> str:
    prefix = video.split("_", 1)[0].lower()
    return prefix if prefix in SOURCES and "_" in video else default


def _clean(value: str | None) -> str:
    return (value or "").strip()


def _is_missing(value: str) -> bool:
    return value == "" or value == MISSING


def normalise_answer(raw: str, options: tuple[str, ...]) -> tuple[str | None, bool]:
    """The option letter of ``raw``; True in the second place when it had to be recovered from option text."""
    text = raw.strip()
    if text.upper() in LETTERS:
        return text.upper(), False
    match = re.match(r"^\(?([A-Da-d])[\).:]\s+", text)
    if match:
        return match.group(1).upper(), True
    for letter, option in zip(LETTERS, options):
        if option and text.lower() == option.lower():
            return letter, True
    return None, False


def _float(value: str, path: Path, row: int, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise AnnotationError(
            f"{path}, row {row}, column {column!r}: {value!r} is not a number of seconds (use -1 for unknown)"
        ) from None


def read_annotations(path: str | Path, default_source: str = "") -> list[Annotation]:
    """Parse a VAU-Bench-format CSV.

    Args:
        path: the CSV file.
        default_source: source for names without a prefix (per-source test files), e.g. ``"msad"``.

    Raises:
        AnnotationError: missing file or columns, or a row that cannot be read; names file, row and column.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist; check the config key data.annotations")
    if not default_source:
        stem = path.stem.lower()
        default_source = next((s for s in SOURCES if stem.endswith(s) or f"_{s}" in stem), "")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise AnnotationError(
                f"{path}: missing column(s) {missing}; a VAU-Bench CSV has the columns {list(COLUMNS)}"
            )
        reader.fieldnames = header
        rows = []
        for index, record in enumerate(reader):
            line = index + 2
            if None in record:
                raise AnnotationError(f"{path}, row {line}: more fields than the {len(header)} columns")
            rows.append(_parse_row({k: _clean(v) for k, v in record.items()}, path, line, default_source))
    return rows


def _parse_row(rec: dict[str, str], path: Path, line: int, default_source: str) -> Annotation:
    video = rec["Video Name"]
    if not video:
        raise AnnotationError(f"{path}, row {line}, column 'Video Name': empty")
    notes: list[str] = []
    question = None if _is_missing(rec["Question"]) else rec["Question"]
    options: tuple[str, ...] = ()
    answer = None
    if question is not None:
        options = tuple(rec[f"Option {i}"] for i in range(1, 5))
        answer, recovered = normalise_answer(rec["Correct Option"], options)
        if answer is None:
            raise AnnotationError(
                f"{path}, row {line}, column 'Correct Option': {rec['Correct Option']!r} is neither a letter A-D "
                f"nor one of the options"
            )
        if recovered:
            notes.append("answer_from_text")
    start, end = rec["Start Time"], rec["End Time"]
    interval = None
    if not (_is_missing(start) or _is_missing(end)):
        interval = (_float(start, path, line, "Start Time"), _float(end, path, line, "End Time"))
        if interval[1] < interval[0]:
            raise AnnotationError(f"{path}, row {line}: End Time {end} is before Start Time {start}")
    return Annotation(
        video=video, row=line, source=source_of(video, default_source), question=question, options=options,
        answer=answer, key_object=rec["Key Object"], description=rec["Description"], reasoning=rec["Reasoning"],
        anomaly_class=rec["Anomaly Class"], interval=interval, notes=tuple(notes),
    )


def write_annotations(path: str | Path, rows: list[dict[str, str]]) -> None:
    """Write rows (dicts keyed by :data:`COLUMNS`) as a VAU-Bench CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def summarize(rows: list[Annotation]) -> Counter:
    return Counter(note for r in rows for note in r.notes)
