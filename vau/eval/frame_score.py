"""Frame-level scoring for ``python -m vau score frame_scores=FILE``: per-frame anomaly scores against frame-numbered
annotations (``format=ucf_crime`` / ``xd_violence``), in the layout video-anomaly-detection papers report, with the
constant-score and random-score baselines beside the model.

The scores file is JSON lines, one object per video: ``{"video": "Abuse028_x264.mp4", "frame_scores": [0.1, ...]}``,
one score per frame of the video (frame 0 first). A frame is anomalous when an annotated event covers it (start and
end frame included). Metrics: :class:`vau.frame_metrics.FrameAnomalyScores` (exact AUC, AP, false-alarm rate).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vau.data.annotations import Annotation, source_name
from vau.data.frame_annotations import FRAME_EVENTS
from vau.frame_metrics import FrameAnomalyScores

COLUMNS = ("auc", "auc_anomalous_videos", "ap", "false_alarm_rate")
HEADERS = ("AUC", "AUC (anomalous videos)", "AP", "false alarms")


class FrameScoreError(ValueError):
    """A scores file or annotation that cannot be scored; the message names file, line or video."""


def read_frame_scores(path: str | Path) -> dict[str, list[float]]:
    """video -> per-frame scores from a JSON-lines file; a malformed line is named with its number."""
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
