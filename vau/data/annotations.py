"""Read VAU-Bench annotation CSVs exactly, into :class:`Annotation` rows.

Conventions of the released files (VAU-R1, ``annotations/*.csv``; see docs/data.md):

- ``-1`` in the Question column means the video has no question; ``-1`` (or ``-1.0``) start/end means the
  anomaly interval is unknown.
- Normal clips have start = end = 0.0 and class ``Normal``.
- Train/val names carry a source prefix (``msad_``, ``ucf_``, ``ecva_``); per-source test files (``test_msad.csv``)
  do not, and take their source from the file name.
- A few rows store the option text (``"D. Green trash bin ..."``) instead of the letter: recovered and counted.
- Class names are spelled ``Traffic_accident``, ``Natural Hazard``, ...: matched to :data:`ANOMALY_CLASSES`
  ignoring case, spaces, underscores and hyphens.
- The Reasoning column is markdown or holds Python-literal lists/dicts: turned into clean text by
  :mod:`vau.data.reasoning` (no ``eval``); the raw cell is kept in ``raw_reasoning``.

Headers are matched ignoring case and surrounding spaces (``start time`` = ``Start Time``); extra columns are
kept verbatim in ``Annotation.extra`` (header -> cell; the reflect tasks read the reflection columns of
``python -m vau data reflect`` from there, :mod:`vau.tasks.reflect`) and otherwise ignored. Anything unreadable
raises :class:`AnnotationError` naming the file, row and column.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vau.data.reasoning import clean_reasoning, reasoning_format

COLUMNS = (
    "Video Name", "Question", "Option 1", "Option 2", "Option 3", "Option 4", "Correct Option",
    "Key Object", "Description", "Reasoning", "Anomaly Class", "Start Time", "End Time",
)
LETTERS = ("A", "B", "C", "D")
SOURCES = ("msad", "ucf", "ecva")
SOURCE_NAMES = {"msad": "MSAD", "ucf": "UCF-Crime", "ecva": "ECVA", "xd": "XD-Violence"}  # display names, the paper's order first
MISSING = "-1"
NORMAL = "Normal"

# The 20 labels of VAU-Bench classification (19 anomaly types + Normal), spelled as in the released annotation
# files and in VAU-R1's classification evaluation (alphabetical, as there).
ANOMALY_CLASSES = (
    "Abuse", "Agriculture", "Arrest", "Arson", "Assault", "Explosion", "Fighting", "Fire", "Food Safety",
    "Medical Abnormality", "Natural Hazard", "Normal", "Object_falling", "People_falling", "Robbery", "Shooting",
    "Stealing", "Traffic_accident", "Vandalism", "Water_incident",
)


def source_name(source: str) -> str:
    """Display name of a source key (``ucf`` -> ``UCF-Crime``); an unknown key as given, "" as ``unknown``."""
    return SOURCE_NAMES.get(source, source or "unknown")


def source_order(sources) -> list[str]:
    """The paper's source order (MSAD, UCF-Crime, ECVA), then other sources by name."""
    present = set(sources)
    return [s for s in SOURCE_NAMES if s in present] + sorted(present - set(SOURCE_NAMES))


def class_key(name: str) -> str:
    """Comparison key of a class name: lower case, runs of spaces/underscores/hyphens as one ``_``."""
    return re.sub(r"[\s_\-]+", "_", (name or "").strip().lower()).strip("_")


_CLASS_BY_KEY = {class_key(c): c for c in ANOMALY_CLASSES}


def normalise_class(name: str) -> str | None:
    """The canonical spelling in :data:`ANOMALY_CLASSES` of ``name`` ("traffic accident" -> "Traffic_accident"),
    or None when it is not one of the 20 labels."""
    return _CLASS_BY_KEY.get(class_key(name))


class AnnotationError(ValueError):
    """A malformed annotation file; the message names file, row and column."""


@dataclass(frozen=True)
class Annotation:
    """One annotation row, normalised.

    Attributes:
        video: the file name exactly as in ``Video Name``.
        row: 1-based row number in the CSV (the header is row 1; a quoted multi-line cell is one row), for
            error messages and reports.
        source: ``msad`` / ``ucf`` / ``ecva`` from the name prefix, else the file's default source, else "".
        question, options, answer: the multiple-choice question, its four options and the correct letter;
            None / () / None when the row has no question (``-1``).
        anomaly_class: canonical class (one of :data:`ANOMALY_CLASSES`), or the stripped cell when unknown.
        interval: (start, end) in seconds; None when unknown (``-1``); (0.0, 0.0) for normal clips.
        reasoning: clean text of the Reasoning cell; ``raw_reasoning`` is the cell as written.
        notes: what normalisation did to this row (``answer_from_text``, ``class_respelled``, ...), counted by
            :func:`summarize` and printed by ``python -m vau data stats``.
        extra: the cells of columns beyond :data:`COLUMNS`, by header as written (stripped); not compared.
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
    raw_reasoning: str = field(default="", compare=False, repr=False)
    notes: tuple[str, ...] = field(default=(), compare=False)
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_normal(self) -> bool:
        return self.anomaly_class == NORMAL

    @property
    def has_question(self) -> bool:
        return self.question is not None and self.answer is not None and len(self.options) == 4

    @property
    def known_class(self) -> bool:
        return self.anomaly_class in ANOMALY_CLASSES

    @property
    def has_anomaly_interval(self) -> bool:
        """An anomalous clip whose anomaly interval is known and has positive length (a TAG target)."""
        return not self.is_normal and self.interval is not None and self.interval[1] > self.interval[0]


def source_of(video: str, default: str = "") -> str:
    """The source prefix of a video name (case-insensitive: ``MSAD_normal_1.mp4`` -> ``msad``), else ``default``."""
    prefix = video.split("_", 1)[0].lower()
    return prefix if prefix in SOURCES and "_" in video else default


def _is_missing(value: str) -> bool:
    if value == "":
        return True
    try:
        return float(value) == -1.0
    except ValueError:
        return False


def normalise_answer(raw: str, options: tuple[str, ...]) -> tuple[str | None, bool]:
    """The option letter of ``raw``; True in the second place when it had to be recovered from option text.

    Accepts a letter (``"b"``, ``"(B)"``), a letter with the option text (``"D. Green trash bin"``; when the text
    is exactly one option's it must be that letter's), or the option text alone. Returns (None, False) when
    nothing matches or letter and text disagree.
    """
    text = raw.strip()
    if text.upper() in LETTERS:
        return text.upper(), False
    lowered = [re.sub(r"\s+", " ", o).strip().rstrip(".").lower() for o in options]

    def by_text(value: str) -> str | None:
        value = re.sub(r"\s+", " ", value).strip().rstrip(".").lower()
        hits = [LETTERS[i] for i, o in enumerate(lowered) if o and o == value]
        return hits[0] if len(hits) == 1 else None

    match = re.match(r"^\(?([A-Da-d])[\).:]\s*(.*)$", text, re.DOTALL)
    if match:
        letter, rest = match.group(1).upper(), match.group(2)
        if not rest.strip():
            return letter, False
        named = by_text(rest)
        if named is None:
            whole = by_text(text)  # an option whose own text starts like "A. ..."
            return (whole or letter), True
        # Letter and text must agree; a row saying "D. <text of option B>" is ambiguous and is rejected.
        return (letter, True) if named == letter else (None, False)
    letter = by_text(text)
    return (letter, True) if letter else (None, False)


def _seconds(value: str, path: Path, row: int, column: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise AnnotationError(
            f"{path}, row {row}, column {column!r}: {value!r} is not a number of seconds (use -1 for unknown)"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise AnnotationError(f"{path}, row {row}, column {column!r}: {value!r} is not a time in seconds "
                              f"(use -1 for unknown)")
    return seconds


def _default_source(path: Path) -> str:
    stem = path.stem.lower()
    return next((s for s in SOURCES if stem.endswith(s) or f"_{s}" in stem or stem.startswith(f"{s}_")), "")


def read_annotations(path: str | Path, default_source: str = "") -> list[Annotation]:
    """Parse a VAU-Bench-format CSV.

    Args:
        path: the CSV file.
        default_source: source for names without a prefix; by default taken from the file name
            (``test_msad.csv`` -> ``msad``, ``test_ucf_crime.csv`` -> ``ucf``).

    Raises:
        AnnotationError: missing file or columns, or a row that cannot be read; names file, row and column.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist; check the config key data.annotations")
    default_source = default_source or _default_source(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise AnnotationError(f"{path}: empty file; a VAU-Bench CSV starts with the header {list(COLUMNS)}")
            by_key = {h.strip().lower(): i for i, h in enumerate(header)}
            missing = [c for c in COLUMNS if c.lower() not in by_key]
            if missing:
                raise AnnotationError(
                    f"{path}: missing column(s) {missing}; found {header}. A VAU-Bench CSV has the columns "
                    f"{list(COLUMNS)} (case and surrounding spaces are ignored)"
                )
            where = {c: by_key[c.lower()] for c in COLUMNS}
            known = {c.lower() for c in COLUMNS}
            others = [(h.strip(), i) for i, h in enumerate(header) if h.strip() and h.strip().lower() not in known]
            rows = []
            for line, record in enumerate(reader, start=2):
                if not any(cell.strip() for cell in record):
                    continue  # a blank line, e.g. at the end of a hand-edited file
                if len(record) != len(header):
                    raise AnnotationError(f"{path}, row {line}: {len(record)} fields but the header has {len(header)} "
                                          f"columns (an unquoted comma or a broken quote?)")
                cells = {c: record[i].strip() for c, i in where.items()}
                rows.append(_parse_row(cells, path, line, default_source))
                if others:
                    rows[-1] = replace(rows[-1], extra={h: record[i] for h, i in others})
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err}); re-save the CSV as UTF-8") from None
    except csv.Error as err:
        raise AnnotationError(f"{path}: unreadable CSV: {err}") from None
    return rows


def _parse_row(rec: dict[str, str], path: Path, line: int, default_source: str) -> Annotation:
    video = rec["Video Name"]
    if not video:
        raise AnnotationError(f"{path}, row {line}, column 'Video Name': empty")
    notes: list[str] = []
    question = None if _is_missing(rec["Question"]) else rec["Question"]
    options: tuple[str, ...] = ()
    answer = None
    if question is None:
        notes.append("no_question")
    else:
        options = tuple(rec[f"Option {i}"] for i in range(1, 5))
        empty = [f"Option {i}" for i, o in enumerate(options, 1) if _is_missing(o)]
        if empty:
            raise AnnotationError(f"{path}, row {line}, column {empty[0]!r}: the row has a question but this option "
                                  f"is empty or -1 (set Question to -1 if the video has no question)")
        answer, recovered = normalise_answer(rec["Correct Option"], options)
        if answer is None:
            raise AnnotationError(
                f"{path}, row {line}, column 'Correct Option': {rec['Correct Option']!r} is neither a letter A-D "
                f"nor the text of one of the four options"
            )
        if recovered:
            notes.append("answer_from_text")
    raw_class = rec["Anomaly Class"]
    anomaly_class = normalise_class(raw_class)
    if anomaly_class is None:
        anomaly_class = raw_class
        notes.append("unknown_class" if raw_class and not _is_missing(raw_class) else "no_class")
    elif anomaly_class != raw_class:
        notes.append("class_respelled")
    interval = _interval(rec, path, line, anomaly_class, notes)
    raw_reasoning = rec["Reasoning"]
    if reasoning_format(raw_reasoning) == "python":
        notes.append("reasoning_python_literals")
    return Annotation(
        video=video, row=line, source=source_of(video, default_source), question=question, options=options,
        answer=answer, key_object="" if _is_missing(rec["Key Object"]) else rec["Key Object"],
        description="" if _is_missing(rec["Description"]) else rec["Description"],
        reasoning=clean_reasoning(raw_reasoning), anomaly_class=anomaly_class, interval=interval,
        raw_reasoning=raw_reasoning, notes=tuple(notes),
    )


def _interval(rec: dict[str, str], path: Path, line: int, anomaly_class: str,
              notes: list[str]) -> tuple[float, float] | None:
    start, end = rec["Start Time"], rec["End Time"]
    if _is_missing(start) and _is_missing(end):
        notes.append("interval_unknown")
        return None
    if _is_missing(start) or _is_missing(end):
        column = "Start Time" if _is_missing(start) else "End Time"
        raise AnnotationError(f"{path}, row {line}, column {column!r}: -1 (unknown) while the other bound is "
                              f"known; write -1 in both for an unknown interval")
    interval = (_seconds(start, path, line, "Start Time"), _seconds(end, path, line, "End Time"))
    if interval[1] < interval[0]:
        raise AnnotationError(f"{path}, row {line}, column 'End Time': {end} is before Start Time {start}")
    if anomaly_class == NORMAL and interval != (0.0, 0.0):
        notes.append("normal_with_interval")
    elif anomaly_class != NORMAL and interval[1] == interval[0]:
        notes.append("anomaly_empty_interval")  # e.g. (0.0, 0.0) on an anomalous clip: no TAG target
    return interval


def write_annotations(path: str | Path, rows: list[dict[str, str]], columns: Sequence[str] = COLUMNS) -> None:
    """Write rows (dicts keyed by ``columns``, default :data:`COLUMNS`) as a VAU-Bench CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def summarize(rows: list[Annotation]) -> Counter:
    """How many rows carry each normalisation note (see :class:`Annotation`)."""
    return Counter(note for r in rows for note in r.notes)
