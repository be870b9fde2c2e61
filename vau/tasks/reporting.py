"""The report sections a task contributes besides its metrics (``Task.report_sections``): the QA answer-position
analysis, the confusion matrix of a classification task and the IoU histogram of a grounding task.

They live with the tasks, below the report (:mod:`vau.eval.report`), which asks each task for its sections rather than
switching on what kind of answer it gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from vau.data.annotations import source_order
from vau.data.sample import Sample
from vau.metrics import ClassAccuracy, local
from vau.parsing import is_normal_interval
from vau.qa_position import position_scores

if TYPE_CHECKING:
    from vau.tasks.base import Task

IOU_EDGES = [round(i / 10, 1) for i in range(11)]
UNPARSED = "unparsed"


def position_report(task: Task, rows: Sequence[Sample], replies: Mapping) -> dict:
    """:func:`vau.qa_position.position_scores` overall and per source; ``replies`` maps (task, video, shift) to a
    prediction record."""
    mine = {(video, shift): record for (name, video, shift), record in replies.items() if name == task.name}
    out = {"task": task.name, **position_scores(task, rows, mine), "by_source": {}}
    for source in source_order(s.source for s in rows):
        part = [s for s in rows if s.source == source]
        out["by_source"][source] = position_scores(task, part, mine)
    return out


def class_confusion(task: Task, samples: Sequence[Sample], completions: Sequence[str],
                    classes: Sequence[str]) -> dict:
    """Truth rows x predicted columns over the classes that occur, plus an ``unparsed`` column, from the confusion
    counts of :class:`vau.metrics.ClassAccuracy`."""
    metric = local(ClassAccuracy(classes, task=task))  # its confusion state is the matrix
    metric.update(list(completions), list(samples))
    full = metric.confusion.to(dtype=int).tolist()
    k = len(classes)
    keep = [i for i in range(k) if any(full[i]) or any(row[i] for row in full)]
    rows = keep + ([k] if any(full[k]) else [])  # truths outside the class list (none when it covers the data)
    names = [classes[i] for i in keep]
    return {"task": task.name, "classes": names + (["other"] if len(rows) > len(keep) else []),
            "columns": [*names, UNPARSED], "matrix": [[full[r][c] for c in [*keep, k]] for r in rows]}


def binary_confusion(task: Task, samples: Sequence[Sample], completions: Sequence[str]) -> dict:
    """Anomaly / Normal truth rows x Anomaly / Normal / unparsed calls."""
    names = ["Anomaly", "Normal"]
    matrix = [[0, 0, 0], [0, 0, 0]]
    for sample, reply in zip(samples, completions):
        truth = task.anomalous_truth(sample)
        if truth is None:
            continue
        call = task.anomalous_reply(reply, sample)
        matrix[0 if truth else 1][2 if call is None else (0 if call else 1)] += 1
    return {"task": task.name, "classes": names, "columns": [*names, UNPARSED], "matrix": matrix}


def iou_histogram(task: Task, samples: Sequence[Sample], completions: Sequence[str]) -> dict:
    """Counts of the IoUs of anomalous clips (no parseable interval = IoU 0) in 10 bins of [0, 1]; the last bin
    holds IoU 1."""
    ious = [task.accuracy(r, s) for s, r in zip(samples, completions)
            if task.truth(s) is not None and not is_normal_interval(task.truth(s))]
    counts = [0] * (len(IOU_EDGES) - 1)
    for iou in ious:  # comparisons with the edges, so a clip counted by R@0.5 is in a bin from 0.5 up
        counts[sum(iou >= edge for edge in IOU_EDGES[1:-1])] += 1
    return {"task": task.name, "edges": list(IOU_EDGES), "counts": counts, "n": len(ious)}
