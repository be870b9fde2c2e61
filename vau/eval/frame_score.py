"""Frame-level scoring for ``python -m vau score frame_scores=FILE``: per-frame anomaly scores against frame-numbered
annotations (``format=ucf_crime`` / ``xd_violence``), in the layout video-anomaly-detection papers report, with the
constant-score and random-score baselines beside the model.

The scores file is JSON lines, one object per video: ``{"video": "Abuse028_x264.mp4", "frame_scores": [0.1, ...]}``,
one score per frame of the video (frame 0 first). It may instead hold a temporal-grounding model's predictions
(``python -m vau predict task=tag``, or a ``tag`` run's ``predictions_rank0.jsonl``): each record's interval then
becomes frame scores (:func:`interval_frame_scores`: 1 inside the answered interval, 0 elsewhere), counted over
the frames of the record's ``video_path`` at its own frame rate. A frame is anomalous when an annotated event covers it (start and
end frame included). Metrics: :class:`vau.frame_metrics.FrameAnomalyScores` (exact AUC, AP, false-alarm rate).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import torch

from vau.data.annotations import Annotation, source_name
from vau.data.frame_annotations import FRAME_EVENTS
from vau.datamodules.decoders import VideoError, open_video
from vau.frame_metrics import FrameAnomalyScores
from vau.tasks import get_task, task_names

COLUMNS = ("auc", "auc_anomalous_videos", "ap", "false_alarm_rate")
HEADERS = ("AUC", "AUC (anomalous videos)", "AP", "false alarms")


class FrameScoreError(ValueError):
    """A scores file or annotation that cannot be scored; the message names file, line or video."""


def interval_frame_scores(interval, frames: int, rate: Fraction | float) -> list[float]:
    """1.0 for every frame whose middle lies in ``interval`` ([start, end] seconds, ends included), 0.0 elsewhere.

    A normal answer (``[0, 0]``), no interval (an unparsed reply: ``None``) or one outside the video scores 0
    everywhere. Frame ``i`` lasts from ``i / rate`` to ``(i + 1) / rate``; the comparison is exact (rationals).

    >>> interval_frame_scores([1.0, 2.0], 6, 2)
    [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    """
    scores = [0.0] * frames
    if not interval or len(interval) != 2:
        return scores
    start, end = (Fraction(repr(float(x))) for x in interval)  # the decimal the reply wrote, not its binary float
    if end <= start:
        return scores
    rate = Fraction(rate)
    # middle of frame i = (2i + 1) / (2 rate): inside when start <= middle <= end
    first = max(0, math.ceil(start * rate - Fraction(1, 2)))
    last = min(frames - 1, math.floor(end * rate - Fraction(1, 2)))
    for i in range(first, last + 1):
        scores[i] = 1.0
    return scores


def _interval_scores(record: dict, where: str) -> list[float]:
    """Frame scores of one temporal-grounding prediction record (its interval over its video's frames)."""
    path = record.get("video_path")
    if not isinstance(path, str) or not path:
        raise FrameScoreError(f"{where}: a {record.get('task')} prediction without 'video_path': its frames cannot be "
                              f"counted (predict writes it; score per-frame scores with 'frame_scores' instead)")
    try:
        source = open_video(path, "pyav", 1)
    except VideoError as err:
        raise FrameScoreError(f"{where}: {err}") from None
    prediction = record.get("prediction")
    if prediction is not None and not (isinstance(prediction, list) and len(prediction) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in prediction)):
        raise FrameScoreError(f"{where}: 'prediction' must be [start, end] in seconds or null, got {prediction!r}")
    return interval_frame_scores(prediction, source.total, source.rate)


def _is_interval_record(record: dict) -> bool:
    task = record.get("task")
    return ("frame_scores" not in record and isinstance(task, str) and task in task_names()
            and get_task(task).answer_kind == "interval")


def read_frame_scores(path: str | Path) -> dict[str, list[float]]:
    """video -> per-frame scores from a JSON-lines file of frame scores or of temporal-grounding predictions; a
    malformed line is named with its number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise FrameScoreError(f"frame_scores={path}: cannot be read as UTF-8 text: {err}") from None
    out: dict[str, list[float]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            raise FrameScoreError(f"{where}: not valid JSON ({err}); each line is "
                                  f'{{"video": "name.mp4", "frame_scores": [0.1, ...]}}') from None
        if isinstance(record, dict) and _is_interval_record(record):
            if record.get("shift"):
                continue  # one interval per video: a shifted ask of the same question adds nothing
            record = {"video": record.get("video"), "frame_scores": _interval_scores(record, where)}
        video, scores = (record.get("video"), record.get("frame_scores")) if isinstance(record, dict) else (None, None)
        if not isinstance(video, str) or not video.strip():
            raise FrameScoreError(f"{where}: key 'video' must be a non-empty file name")
        if not isinstance(scores, list) or not scores or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
            raise FrameScoreError(f"{where}: key 'frame_scores' must be a non-empty list of finite numbers")
        if video.strip() in out:
            raise FrameScoreError(f"{where}: video {video.strip()} already has scores on an earlier line")
        out[video.strip()] = [float(s) for s in scores]
    if not out:
        raise FrameScoreError(f"frame_scores={path}: holds no scores")
    return out


def frame_labels(ann: Annotation, frames: int) -> torch.Tensor:
    """0/1 per frame of ``ann``'s video: 1 inside an annotated event (end frame included)."""
    labels = torch.zeros(frames, dtype=torch.long)
    for start, end in ann.extra.get(FRAME_EVENTS, ()):
        if end >= frames:
            raise FrameScoreError(f"video {ann.video}: event ({start}, {end}) ends past its {frames} scored frames; "
                                  f"give one score per frame of the video")
        labels[start:end + 1] = 1
    return labels


def frame_report(annotations: list[Annotation], scores: dict[str, list[float]], threshold: float = 0.5,
                 seed: int = 0) -> dict:
    """Per source and over all videos: the model's metrics and the constant / random baselines; plus coverage."""
    if not any(FRAME_EVENTS in a.extra for a in annotations):
        raise FrameScoreError("these annotation rows carry no frame events: frame-level scores need a frame-numbered "
                              "format, e.g. format=ucf_crime or format=xd_violence")
    generator = torch.Generator().manual_seed(seed)
    by_source: dict[str, dict[str, FrameAnomalyScores]] = {}
    missing = [a.video for a in annotations if a.video not in scores]
    for ann in annotations:
        if ann.video not in scores:
            continue
        values = torch.tensor(scores[ann.video], dtype=torch.float64)
        labels = frame_labels(ann, values.numel())
        baselines = {"model": values, "constant": torch.zeros_like(values),
                     "random": torch.rand(values.numel(), generator=generator, dtype=torch.float64)}
        for source in (ann.source or "?", "all"):
            metrics = by_source.setdefault(source, {k: FrameAnomalyScores(threshold) for k in baselines})
            for kind, value in baselines.items():
                metrics[kind].update(value, labels)
    if not by_source:
        raise FrameScoreError("no annotated video has frame scores (compare the video names of both files)")
    table = {source: {kind: {k: float(v) for k, v in metric.compute().items()} for kind, metric in metrics.items()}
             for source, metrics in by_source.items()}
    extra = sorted(set(scores) - {a.video for a in annotations})
    return {"threshold": threshold, "seed": seed, "sources": table, "missing": missing, "unannotated": extra,
            "videos": len(annotations) - len(missing)}


def format_frame_report(report: dict, title: str) -> str:
    def cell(x: float) -> str:
        return "-" if math.isnan(x) else f"{100 * x:.2f}"

    lines = [f"## {title}", "", "| dataset | scores | " + " | ".join(HEADERS) + " |",
             "|---|---|" + "---:|" * len(HEADERS)]
    for source in [s for s in report["sources"] if s != "all"] + ["all"]:
        name = "All" if source == "all" else source_name(source)
        for kind, label in (("model", "model"), ("constant", "constant"), ("random", f"random (seed {report['seed']})")):
            row = report["sources"][source][kind]
            lines.append(f"| {name} | {label} | " + " | ".join(cell(row[c]) for c in COLUMNS) + " |")
    lines += ["", f"Percent; {report['videos']} videos scored; false alarms: share of normal videos' frames scored "
                  f">= {report['threshold']}. AUC 50.00 is chance."]
    if report["missing"]:
        lines.append(f"No scores for {len(report['missing'])} annotated video(s), left out: "
                     + ", ".join(report["missing"][:5]) + (" ..." if len(report["missing"]) > 5 else ""))
    if report["unannotated"]:
        lines.append(f"Scores for {len(report['unannotated'])} video(s) not in the annotations, ignored: "
                     + ", ".join(report["unannotated"][:5]) + (" ..." if len(report["unannotated"]) > 5 else ""))
    return "\n".join(lines)
