"""Annotation formats that mark anomalies in frame numbers (issue 21): UCF-Crime's temporal test annotations and
XD-Violence's test annotations, as registered readers (``data.format: ucf_crime`` / ``xd_violence``).

The formats, from the datasets' published descriptions (no annotation file is part of vau):

- **UCF-Crime** (``Temporal_Anomaly_Annotation_for_Testing_Videos.txt``): one line per test video, fields separated
  by white space: video file name, class, start and end frame of the first event, start and end frame of a second
  event; ``-1`` where an event is absent (normal videos: ``-1`` four times). The full test list has 290 videos,
  140 anomalous and 150 normal.
- **XD-Violence** (the test ``annotations.txt``): one line per video that has violent frames: its name, then any
  number of start/end frame pairs. The class is in the name (``..._label_B2-G-0``: A normal, B1 fighting,
  B2 shooting, B4 riot, B5 abuse, B6 car accident, G explosion; the first code is the row's class). A video without a
  line is normal; a line with a name and no pairs is read as such a normal video, so a test list can name them.

Frame numbers stay frame numbers in the rows (``Annotation.extra[FRAME_EVENTS]``, a tuple of (start, end) pairs):
seconds depend on each file's real frame rate, which only the video can say. :func:`frames_to_seconds` turns them
into seconds with the exact rational rate of the file (:func:`vau.datamodules.video.frame_rate`), so 29.97 fps
(30000/1001) is not rounded to 29.97.

A malformed line raises :class:`~vau.data.annotations.AnnotationError` naming file, line and what is wrong.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

from vau.data.annotations import NORMAL, Annotation, AnnotationError, normalise_class
from vau.registry import READERS

FRAME_EVENTS = "frame_events"  # Annotation.extra key: ((start_frame, end_frame), ...), end inclusive

# XD-Violence label codes (the dataset's description); "A" is normal. B6, "car accident" there, is VAU-Bench's
# Traffic_accident; Riot has no VAU-Bench class (kept as written, noted like any class outside the 20 labels).
XD_CLASSES = {"A": NORMAL, "B1": "Fighting", "B2": "Shooting", "B4": "Riot", "B5": "Abuse", "B6": "Traffic_accident",
              "G": "Explosion"}


def frames_to_seconds(frame: int, rate: Fraction | float) -> float:
    """The time of frame ``frame`` (0-based) at ``rate`` frames per second, rounded once from the exact ratio.

    >>> frames_to_seconds(30000, Fraction(30000, 1001))
    1001.0
    """
    return float(Fraction(int(frame)) / Fraction(rate))


def event_seconds(ann: Annotation, rate: Fraction | float) -> list[tuple[float, float]]:
    """The row's frame events in seconds: each (start frame, end frame) -> (start time, time the end frame ends)."""
    return [(frames_to_seconds(start, rate), frames_to_seconds(end + 1, rate))
            for start, end in ann.extra.get(FRAME_EVENTS, ())]


def _frame_event(row: Annotation, rate: Fraction) -> tuple[int, int] | None | bool:
    """The (first, last) frame of an anomalous row's interval at ``rate``; True for a normal row; None for a row
    the frame formats cannot hold (no interval, or an anomalous row with an empty one)."""
    if row.interval is None:
        return None
    start, end = row.interval
    if row.is_normal:
        return True
    if end <= start:
        return None  # an anomalous row without a usable interval has no frame events to write
    # from the decimal the row shows (0.3 s, not the binary 0.2999...), so a frame boundary stays one
    first = math.floor(Fraction(repr(float(start))) * rate)
    return first, max(first, math.ceil(Fraction(repr(float(end))) * rate) - 1)


def write_ucf_crime(path: str | Path, rows: list[Annotation], rate: Fraction | float) -> Path:
    """Rows with intervals in seconds written in the UCF-Crime test format at ``rate`` frames per second (the demo
    generator writes its test split this way too): an event covers the frames from ``start`` up to before ``end``;
    a normal row is ``-1 -1 -1 -1``; rows without an interval, or anomalous rows whose interval is empty, are left
    out (the reader would refuse an anomalous video without events)."""
    lines = []
    for row in rows:
        event = _frame_event(row, Fraction(rate))
        if event is None:
            continue
        events = "-1 -1 -1 -1" if event is True else f"{event[0]} {event[1]} -1 -1"
        lines.append(f"{row.video} {row.anomaly_class.replace(' ', '_')} {events}")
    path = Path(path)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def xd_name(row: Annotation, codes: dict[str, str] | None = None) -> str | None:
    """The XD-Violence name of a row's video: its file name without extension, then ``_label_<code>`` (``A`` for a
    normal row); None for a class without a code in ``codes`` (default: the XD-Violence classes)."""
    codes = {**{cls: code for code, cls in XD_CLASSES.items()}, **(codes or {})}
    code = codes.get(row.anomaly_class or "")
    return None if code is None else f"{Path(row.video).stem}_label_{code}"


def write_xd_violence(path: str | Path, rows: list[Annotation], rate: Fraction | float,
                      codes: dict[str, str] | None = None) -> dict[str, str]:
    """Rows with intervals in seconds written in the XD-Violence test format at ``rate`` frames per second: one line
    per video, its XD name (:func:`xd_name`, no extension, as in the published file) and its start/end frame pair;
    normal videos are listed with no pair. Rows the format cannot hold (see :func:`write_ucf_crime`, or a class
    without a code) are left out.

    Returns:
        XD name -> the row's video, for the caller to give the files those names (the class is in the name).
    """
    lines, names = [], {}
    for row in rows:
        event, name = _frame_event(row, Fraction(rate)), xd_name(row, codes)
        if event is None or name is None:
            continue
        lines.append(name if event is True else f"{name} {event[0]} {event[1]}")
        names[name] = row.video
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return names


def _lines(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    seen: dict[str, int] = {}  # both formats: one line per video, its name first
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            cells = line.split()
            if cells[0] in seen:
                raise AnnotationError(f"{path}, line {number}: video {cells[0]} already on line {seen[cells[0]]}")
            seen[cells[0]] = number
            yield number, cells


def _frame(path, number: int, cell: str) -> int:
    try:
        value = int(cell)
    except ValueError:
        raise AnnotationError(f"{path}, line {number}: frame number {cell!r} is not an integer") from None
    return value


def _events(path, number: int, cells: list[str]) -> tuple[tuple[int, int], ...]:
    if len(cells) % 2:
        raise AnnotationError(f"{path}, line {number}: frame numbers come in start/end pairs, got {len(cells)}")
    events = []
    for start, end in zip(cells[::2], cells[1::2]):
        start, end = _frame(path, number, start), _frame(path, number, end)
        if start == -1 and end == -1:
            continue
        if start < 0 or end < start:
            raise AnnotationError(f"{path}, line {number}: event ({start}, {end}) is not 0 <= start <= end")
        events.append((start, end))
    return tuple(events)


def _row(video: str, number: int, source: str, cls: str, events: tuple) -> Annotation:
    canonical = normalise_class(cls)
    notes = () if canonical else ("class_outside_the_20_labels",)
    return Annotation(video=video, row=number, source=source, anomaly_class=canonical or cls,
                      interval=(0.0, 0.0) if canonical == NORMAL else None, notes=notes,
                      extra={FRAME_EVENTS: events})


@READERS.register("ucf_crime")
def ucf_crime(path: str | Path) -> list[Annotation]:
    """UCF-Crime temporal test annotations: video, class, two start/end frame pairs (-1: none)."""
    rows = []
    for number, cells in _lines(path):
        if len(cells) != 6:
            raise AnnotationError(f"{path}, line {number}: expected 6 fields (video, class, start1, end1, start2, "
                                  f"end2), got {len(cells)}")
        video, cls = cells[0], cells[1]
        events = _events(path, number, cells[2:])
        if (cls.lower() == "normal") == bool(events):
            raise AnnotationError(f"{path}, line {number}: class {cls} with {len(events)} event(s); a normal video has "
                                  f"none (-1 -1 -1 -1) and an anomalous one at least one")
        rows.append(_row(video, number, "ucf", cls, events))
    return rows


@READERS.register("xd_violence")
def xd_violence(path: str | Path) -> list[Annotation]:
    """XD-Violence test annotations: video name, then start/end frame pairs; the class code is in the name."""
    rows = []
    for number, cells in _lines(path):
        video = cells[0]
        events = _events(path, number, cells[1:])
        match = re.search(r"label_([A-Z0-9]+)", video)
        code = match.group(1) if match else ("A" if not events else "")
        if code not in XD_CLASSES:
            raise AnnotationError(f"{path}, line {number}: no known label code in {video!r} (expected "
                                  f"'label_<code>', code one of {', '.join(XD_CLASSES)})")
        if (code == "A") == bool(events):
            raise AnnotationError(f"{path}, line {number}: label {code} with {len(events)} event(s)")
        rows.append(_row(video, number, "xd", XD_CLASSES[code], events))
    return rows
