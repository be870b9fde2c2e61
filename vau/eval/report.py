"""The evaluation report: per-source task metrics, position-robust QA, the CLS confusion matrix, the TAG IoU
histogram and per-clip records, computed from samples and prediction records.

One function, :func:`evaluate`, serves both ``python -m vau score`` (samples made from the annotation rows) and the
test stage of fit/test (the samples the test loader produced; :class:`vau.callbacks.ScoreReportLogger` logs the
result to TensorBoard). Metrics are the tasks' own torchmetrics (:mod:`vau.metrics`), run once per source.

Protocol (as ``score``): every sample given is in its task's denominator, one without a reply counts as an empty
(wrong) reply; the first record of a (video, task, shift) counts. Records with a ``shift`` other than 0 are used
only by the position analysis (:mod:`vau.qa_position`). Values in ``overall`` / ``by_source`` are fractions in
[0, 1] (None when a metric has no rows); ``counts`` holds each metric's denominator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from vau.data.annotations import source_order
from vau.metrics import local
from vau.parsing import canonical_class, cut_after
from vau.tasks import ANOMALY_CLASSES, Sample, Task, get_task, task_names
from vau.tasks.base import split_passes
from vau.tasks.metrics import task_metrics


class ReportError(ValueError):
    """A prediction record the report cannot use (e.g. a shift outside the question's options)."""


def short_name(task: str, metric: str) -> str:
    """The metric's name without its task prefix (``qa_accuracy`` -> ``accuracy``, ``tag_r50`` -> ``r50``)."""
    for prefix in (f"{task}_", f"{task.split('_')[0]}_"):
        if metric.startswith(prefix) and len(metric) > len(prefix):
            return metric[len(prefix):]
    return metric


def _value(x: float) -> float | None:
    return None if math.isnan(x) else x


def _shift(record: Mapping, choice: bool) -> int:
    shift = record.get("shift", 0) if choice else 0
    return 0 if shift is None else int(shift)


def match(samples: Sequence[Sample], records: Sequence[Mapping]) -> dict:
    """Pair records with samples by (task, video name, or its stem) and shift; the first record of each counts.

    Returns ``{"samples": {task: [sample, ...]}, "replies": {(task, video, shift): record}, "unmatched":
    [(video, task)], "duplicates": n, "conflicting_duplicates": n}`` (a repeated sample is kept once).
    """
    by_task: dict[str, dict[str, Sample]] = {}
    for s in samples:
        by_task.setdefault(s.task, {}).setdefault(s.video, s)
    stems = {t: {Path(v).stem: s for v, s in vs.items()} for t, vs in by_task.items()}
    replies: dict[tuple[str, str, int], Mapping] = {}
    unmatched, duplicates, conflicting = [], 0, 0
    for record in records:
        task, video = record["task"], record["video"]
        sample = by_task.get(task, {}).get(video) or stems.get(task, {}).get(Path(video).stem)
        if sample is None:
            unmatched.append((video, task))
            continue
        shift = _shift(record, get_task(task).asks_options)
        if not 0 <= shift < max(1, len(sample.options)):
            raise ReportError(f"prediction for {video} ({task}) has shift {shift}; a question with "
                              f"{len(sample.options)} options takes shifts 0..{len(sample.options) - 1}")
        key = (task, sample.video, shift)
        if key in replies:
            duplicates += 1
            conflicting += replies[key].get("response") != record.get("response")
            continue
        replies[key] = record
    return {"samples": {t: list(vs.values()) for t, vs in by_task.items()}, "replies": replies,
            "unmatched": unmatched, "duplicates": duplicates, "conflicting_duplicates": conflicting}


def group_metrics(task: Task, samples: Sequence[Sample], completions: Sequence[str],
                  classes: Sequence[str]) -> dict:
    """The task's metrics over one group of samples: ``{"n", <short name>: fraction, "counts": {...}}``."""
    metrics = dict(task_metrics(task, classes))
    if any(split_passes(c) is not None for c in completions):  # two-pass replies (generation.self_correct)
        metrics.update({k: m for k, m in task.reflection_metrics().items() if k not in metrics})
    metrics.update(task.report_metrics())
    out: dict = {"n": len(samples)}
    counts, names = {}, {}
    for name, metric in metrics.items():
        metric = local(metric)
        metric.update(list(completions), list(samples))
        key = short_name(task.name, name)
        out[key] = _value(float(metric.compute()))
        counts[key], names[key] = int(metric.total), name
    out["counts"], out["names"] = counts, names
    return out


def percent_metrics(group: Mapping) -> dict:
    """``{log name: {"value": percent (2 decimals) or None, "n"}}`` of a :func:`group_metrics` result (the layout
    of ``score``'s ``metrics`` entry since its first version)."""
    return {name: {"value": None if group[key] is None else round(100.0 * group[key], 2), "n": group["counts"][key]}
            for key, name in group["names"].items()}


def clip_record(task: Task, sample: Sample, record: Mapping | None) -> dict:
    """One clip of the report: reply, prediction and truth as display text, score (TAG: IoU) and correctness."""
    response = (record or {}).get("response", "")
    truth = task.truth(sample)
    prediction = task.parse(response, sample)
    score = task.accuracy(response, sample)
    correct = task.is_correct(score)
    extra = record or {}
    out = {
        "video": sample.video, "task": task.name, "source": sample.source, "anomaly_class": sample.anomaly_class,
        "response": response, "prediction": task.display(prediction, sample), "truth": task.display(truth, sample),
        "score": None if score is None else float(score), "correct": bool(correct),
        "pred_interval": task.answer_interval(prediction), "true_interval": task.answer_interval(truth),
        "frame_times": extra.get("frame_times"), "video_path": extra.get("video_path") or sample.video_path or None,
        "duration": extra.get("duration"), "missing": record is None,
    }
    looks = extra.get("looks")
    if isinstance(looks, list) and looks:  # a look-again reply: the windows shown and the answer before them
        shown = [look for look in looks if isinstance(look, dict) and look.get("window")]
        out["looks"] = [look["window"] for look in shown]
        out["look_times"] = [t for look in shown if isinstance(look.get("frame_times"), list) for t in look["frame_times"]]
        out["initial"] = task.display(task.parse(cut_after(response), sample), sample)  # from the reply, not trusted
    return out


def class_list(samples: Sequence[Sample]) -> tuple[str, ...]:
    """:data:`ANOMALY_CLASSES` plus any class of the samples it does not spell."""
    extra = sorted({s.anomaly_class for s in samples
                    if s.anomaly_class and canonical_class(s.anomaly_class, ANOMALY_CLASSES) is None})
    return (*ANOMALY_CLASSES, *extra)


def evaluate(samples: Sequence[Sample], records: Sequence[Mapping], tasks: Sequence[str] | None = None,
             classes: Sequence[str] | None = None) -> dict:
    """The report of ``records`` (prediction records, contract (1)) against ``samples`` (the denominators).

    Args:
        samples: every scored sample (one per row and task); repeats are kept once.
        records: dicts with ``video``, ``task``, ``response`` and optional ``shift``, ``options``, ``frame_times``,
            ``video_path``, ``duration``.
        tasks: the tasks to report, in order (default: those of the samples, in registry order).
        classes: the CLS class list (default: :func:`class_list` of the samples).

    Returns:
        ``{"tasks": {task: {"overall", "by_source", "rows", "missing", ...}}, "qa_position", "confusion",
        "iou_histogram", "clips", "unmatched", "duplicates", "conflicting_duplicates"}``.
    """
    matched = match(samples, records)
    by_task, replies = matched["samples"], matched["replies"]
    order = task_names()
    if tasks is None:  # text tasks without description metrics have nothing to score
        tasks = sorted((t for t in by_task if get_task(t).reported), key=lambda t: order.index(t) if t in order else 1e9)
    classes = tuple(classes) if classes is not None else class_list(samples)
    report: dict = {"tasks": {}, "qa_position": None, "confusion": None, "iou_histogram": None, "clips": [],
                    "unmatched": matched["unmatched"], "duplicates": matched["duplicates"],
                    "conflicting_duplicates": matched["conflicting_duplicates"]}
    sections: dict[str, dict] = {}  # Task.report_sections; a class task's confusion wins over a binary task's
    for name in tasks:
        task = get_task(name)
        rows = by_task.get(name, [])
        raw = [replies.get((name, s.video, 0)) for s in rows]
        completions = [r.get("response", "") if r else "" for r in raw]
        entry: dict = {"rows": len(rows), "missing": [s.video for s, r in zip(rows, raw) if r is None],
                       "overall": group_metrics(task, rows, completions, classes), "by_source": {}}
        entry["metrics"] = percent_metrics(entry["overall"])
        for source in source_order(s.source for s in rows):
            part = [(s, c) for s, c in zip(rows, completions) if s.source == source]
            entry["by_source"][source] = group_metrics(task, [s for s, _ in part], [c for _, c in part], classes)
        per_class = task.per_class_metric(classes)
        if per_class is not None:
            per_class = local(per_class)
            per_class.update(completions, rows)
            recall, support = per_class.compute().tolist(), per_class.support().tolist()
            entry["per_class"] = {c: {"value": None if math.isnan(r) else round(100.0 * r, 2), "n": int(n)}
                                  for c, r, n in zip(classes, recall, support) if n > 0}
        report["tasks"][name] = entry
        report["clips"] += [clip_record(task, s, r) for s, r in zip(rows, raw)]
        for key, section in task.report_sections(rows, completions, replies, classes).items():
            sections.setdefault(key, section)  # the first task's section of each kind
    report["qa_position"] = sections.get("qa_position")
    report["iou_histogram"] = sections.get("iou_histogram")
    report["confusion"] = sections.get("confusion") or sections.get("binary_confusion")
    return report
