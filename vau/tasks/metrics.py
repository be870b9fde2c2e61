"""The metric set of a task and of a view (one task, or the tasks of ``data.task=mixed``), keyed by log name.

The metric classes live one layer down (:mod:`vau.metrics`, bound to Task objects); which of them a task reports
is the task's own answer (:meth:`vau.tasks.Task.metrics`), gathered here.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchmetrics import Metric

from vau.data.annotations import ANOMALY_CLASSES
from vau.metrics import CircularAccuracy, FormatRate
from vau.tasks import Task, get_task


def _resolve(task: str | Task) -> Task:
    return get_task(task) if isinstance(task, str) else task


def task_metrics(task: str | Task, classes: Sequence[str] = ANOMALY_CLASSES) -> dict[str, Metric]:
    """The scalar metrics reported for ``task`` during validation/test, keyed by log name.

    Args:
        task: a task (or its registered name); its own metrics, plus the format rate (NaN for a task without tags).
        classes: the class list of the CLS confusion-based metrics.
    """
    task = _resolve(task)
    metrics: dict[str, Metric] = {"format_rate": FormatRate()}
    metrics.update(task.metrics(tuple(classes)))
    return metrics


def view_metrics(tasks: Sequence[str], classes: Sequence[str] = ANOMALY_CLASSES,
                 reflection: bool = False, circular: bool = False) -> dict[str, Metric]:
    """The metrics of every task of a view (one task, or those of ``data.task=mixed``), keyed by log name.

    ``reflection=True`` (two-pass self-correction, ``generation.self_correct``) adds each scored task's reflection
    metrics (:meth:`vau.tasks.Task.reflection_metrics`: initial score, Δ(i→c), Δ(c→i)) where it lacks them.
    ``circular=True`` (questions asked under option shifts, ``data.qa_shifts``) adds ``<task>_circular_accuracy``
    for every multiple-choice task, and ``<task>_initial_circular_accuracy`` where its replies carry an initial
    answer (reflect tasks, two-pass replies).

    A name two tasks both report (``cls`` and ``cls_binary`` both give ``cls_binary_accuracy``) is prefixed with
    each task's name, so the numbers of different tasks never mix; one format rate covers all replies.
    """
    per_task = {name: task_metrics(name, classes) for name in tasks}
    if reflection:
        for name, metrics in per_task.items():
            task = _resolve(name)
            if task.scored:
                metrics.update({k: m for k, m in task.reflection_metrics().items() if k not in metrics})
    if circular:
        for name, metrics in per_task.items():
            if _resolve(name).answer_kind == "choice":
                metrics[f"{name}_circular_accuracy"] = CircularAccuracy(name)
                if f"{name}_delta_i2c" in metrics:  # replies with an initial answer: its circular accuracy too
                    metrics[f"{name}_initial_circular_accuracy"] = CircularAccuracy(name, initial=True)
    counts: dict[str, int] = {}
    for metrics in per_task.values():
        for key in metrics:
            counts[key] = counts.get(key, 0) + 1
    out: dict[str, Metric] = {}
    for name, metrics in per_task.items():
        for key, metric in metrics.items():
            if key == "format_rate":
                out.setdefault(key, metric)
            else:
                out[key if counts[key] == 1 else f"{name}_{key}"] = metric
    return out
