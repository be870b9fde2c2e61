"""Annotation formats of time-stamped descriptions (issue 21): UCA and HIVAU-70k, as registered readers
(``data.format: uca`` / ``hivau``). Their rows are description samples (``describe``) with the span a text covers.

The formats, from the datasets' published descriptions and released files (no annotation file is part of vau):

- **UCA** (UCF-Crime Annotation, Yuan et al., CVPR 2024; ``UCFCrime_{Train,Val,Test}.json``): one JSON object keyed by
  the UCF-Crime video name without extension; each value holds ``duration`` (seconds), ``timestamps`` (a list of
  [start, end] in seconds, possibly overlapping and unsorted) and ``sentences`` (one per timestamp).
- **HIVAU-70k** (Holmes-VAU, arXiv 2412.06171; ``{ucf,xd}_database_{train,test}.json``): one JSON object keyed by
  video name without extension; each value holds ``n_frames``, ``fps``, ``label`` (class names, [] when normal),
  ``events`` ([start, end] seconds per event), ``clips`` (per event, the [start, end] of its clips),
  ``clips_caption`` (nested like ``clips``), ``events_summary`` (one text per event), ``video_summary``, and
  ``events_summary_split`` / ``video_summary_split`` (``judgement``, ``description`` and, when anomalous,
  ``analysis``).

Every text becomes one row: ``description`` is the text, ``extra["span"]`` the (start, end) seconds it covers,
``extra["level"]`` its granularity (UCA: ``sentence``; HIVAU: ``clip`` / ``event`` / ``video``). ``interval`` stays
None: these spans say where a text applies, not where an anomaly is, so the anomaly tasks do not read them as
ground truth. The class comes from the name (UCA: ``Abuse043_x264`` -> Abuse, ``Normal_Videos_...`` -> Normal) or
from ``label`` (HIVAU). A span that is reversed, negative or past the end of the video (HIVAU: ``n_frames / fps``;
UCA: ``duration``) by more than 0.5 s, or an entry whose lists disagree in length, raises
:class:`~vau.data.annotations.AnnotationError` naming file, video and item.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from vau.data.annotations import NORMAL, Annotation, AnnotationError, normalise_class
from vau.registry import READERS

SPAN = "span"  # Annotation.extra key: (start, end) seconds the row's text covers
LEVEL = "level"  # Annotation.extra key: sentence | clip | event | video
PAST_END_TOLERANCE = 0.5  # seconds: published spans are rounded to 0.1 s and durations to the frame


def _load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except ValueError as err:
        raise AnnotationError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected one JSON object keyed by video name, got {type(data).__name__}")
    return data


def _span(path, where: str, value, end_of_video: float | None) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}, {where}: {value!r} is not a [start, end] pair of seconds") from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
        raise AnnotationError(f"{path}, {where}: span [{start}, {end}] is not 0 <= start <= end")
    if end_of_video is not None and end > end_of_video + PAST_END_TOLERANCE:
        raise AnnotationError(f"{path}, {where}: span [{start}, {end}] ends past the video's end ({end_of_video:g} s)")
    return start, end


def ucf_class(name: str) -> str:
    """The class in a UCF-Crime video name (``Abuse043_x264`` -> ``Abuse``, ``Normal_Videos_924_x264`` -> Normal)."""
    if name.lower().startswith("normal"):
        return NORMAL
    match = re.match(r"([A-Za-z]+?)\d", name)
    label = match.group(1) if match else name
    return normalise_class(label) or label


def _row(video: str, number: int, source: str, cls: str, text: str, span, level: str, **extra) -> Annotation:
    canonical = normalise_class(cls) if cls else None
    notes = () if canonical or not cls else ("class_outside_the_20_labels",)
    return Annotation(video=video, row=number, source=source, anomaly_class=canonical or cls,
                      description=" ".join(str(text).split()), notes=notes,
                      extra={SPAN: span, LEVEL: level, **extra})


@READERS.register("uca")
def uca(path: str | Path) -> list[Annotation]:
    """UCA captions: one row per sentence, with the span it describes (``extra["span"]``)."""
    rows = []
    for name, entry in _load(path).items():
        if not isinstance(entry, dict) or not {"duration", "timestamps", "sentences"} <= set(entry):
            raise AnnotationError(f"{path}, video {name}: expected duration, timestamps and sentences")
        stamps, sentences = entry["timestamps"], entry["sentences"]
        if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
            raise AnnotationError(f"{path}, video {name}: {len(stamps) if isinstance(stamps, list) else '?'} "
                                  f"timestamps for {len(sentences) if isinstance(sentences, list) else '?'} sentences")
        try:
            duration = float(entry["duration"])
        except (TypeError, ValueError):
            raise AnnotationError(f"{path}, video {name}: duration {entry['duration']!r} is not seconds") from None
        for i, (stamp, sentence) in enumerate(zip(stamps, sentences)):
            span = _span(path, f"video {name}, sentence {i + 1}", stamp, duration)
            rows.append(_row(f"{name}.mp4", len(rows) + 1, "ucf", ucf_class(name), sentence, span, "sentence",
                             duration=duration))
    return rows


@READERS.register("hivau")
def hivau(path: str | Path) -> list[Annotation]:
    """HIVAU-70k: one row per clip caption, per event summary and per video summary (``extra["level"]``)."""
    rows: list[Annotation] = []
    source = "xd" if Path(path).name.lower().startswith("xd") else "ucf"
    for name, entry in _load(path).items():
        where = f"video {name}"
        if not isinstance(entry, dict):
            raise AnnotationError(f"{path}, {where}: expected an object, got {type(entry).__name__}")
        try:
            end_of_video = float(entry["n_frames"]) / float(entry["fps"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise AnnotationError(f"{path}, {where}: needs n_frames and fps (numbers, fps > 0)") from None
        labels = entry.get("label") or []
        cls = str(labels[0]) if labels else NORMAL
        video = name if Path(name).suffix else f"{name}.mp4"
        events = entry.get("events") or []
        lists = {key: entry.get(key) or [] for key in ("clips", "clips_caption", "events_summary")}
        for key, value in lists.items():
            if len(value) != len(events):
                raise AnnotationError(f"{path}, {where}: {len(value)} {key} for {len(events)} events")
        splits = entry.get("events_summary_split") or [{}] * len(events)
        for e, event in enumerate(events):
            span = _span(path, f"{where}, event {e + 1}", event, end_of_video)
            clips, captions = lists["clips"][e], lists["clips_caption"][e]
            if len(clips) != len(captions):
                raise AnnotationError(f"{path}, {where}, event {e + 1}: {len(clips)} clips for {len(captions)} captions")
            for c, (clip, caption) in enumerate(zip(clips, captions)):
                clip_span = _span(path, f"{where}, event {e + 1}, clip {c + 1}", clip, end_of_video)
                rows.append(_row(video, len(rows) + 1, source, cls, caption, clip_span, "clip", event=e))
            split = splits[e] if e < len(splits) and isinstance(splits[e], dict) else {}
            rows.append(_row(video, len(rows) + 1, source, cls, lists["events_summary"][e], span, "event", event=e,
                             judgement=str(split.get("judgement", "")), analysis=str(split.get("analysis", ""))))
        summary = entry.get("video_summary")
        if summary:
            split = entry.get("video_summary_split") if isinstance(entry.get("video_summary_split"), dict) else {}
            rows.append(_row(video, len(rows) + 1, source, cls, summary, (0.0, end_of_video), "video",
                             judgement=str(split.get("judgement", "")), analysis=str(split.get("analysis", ""))))
    return rows
