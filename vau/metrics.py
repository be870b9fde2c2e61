"""torchmetrics metrics over parsed model output, following VAU-R1's evaluation protocol.

Every state is a sum (counts, sums of IoU, a confusion matrix), so DDP synchronisation is exact: the synced
value equals the single-process value over the union of the data. Each metric keeps its denominator in the
``total`` state (score prints it as n). All parsing goes through :mod:`vau.parsing`, the same code the rewards
use; a reply that cannot be parsed counts as wrong and stays in the denominator.

Every metric is bound to a task (:mod:`vau.tasks`): it counts only that task's samples with a ground truth, and
reads truth and prediction through the task, so a plugin task with the same answer kind reuses these metrics.
Denominators (docs/rewards.md): QA accuracy over QA samples with a correct letter; mIoU and R@k over anomalous
TAG samples with a known interval; the false-alarm rate over normal TAG samples (truth [0, 0]); classification
over CLS samples with a class.

Example:
    >>> from vau.data import Sample
    >>> metric = AnswerAccuracy("qa")
    >>> qa = Sample(task="qa", video="v.mp4", options=("a", "b", "c", "d"), answer="B")
    >>> metric.update(["<answer>B</answer>", "<answer>C</answer>"], [qa, qa])
    >>> float(metric.compute())
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from vau.data.annotations import ANOMALY_CLASSES
from vau.data.sample import Sample
from vau.parsing import (
    canonical_class,
    class_candidates,
    interval_iou,
    is_normal_interval,
    normalize_label,
    parse_class,
)
from vau.registry import TASKS

#: A task object (:class:`vau.tasks.base.Task`). The metrics sit below the tasks (a task names its metrics), so they
#: take the object and never import its class, not even for annotations.
TaskObject = Any


def _resolve(task: str | TaskObject) -> TaskObject:
    """A metric is bound to a Task object; a registered name is looked up in the registry (not imported from
    vau.tasks, which builds its metrics from this module)."""
    return TASKS.instance(task) if isinstance(task, str) else task


def local(metric: Metric) -> Metric:
    """``metric`` computing over this process's updates only: a report is built on one rank from records already
    gathered, so a torchmetrics sync inside ``compute`` would wait for ranks that never call it."""
    metric.sync_on_compute = False
    metric._to_sync = False  # what compute() reads; reset from sync_on_compute only by forward()
    return metric


def task_of(sample: Sample) -> TaskObject | None:
    """The task of a sample, or None for a name no loaded module registered."""
    name = getattr(sample, "task", None)
    return TASKS.instance(name) if isinstance(name, str) and name in TASKS else None


class _Ratio(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, task: str | TaskObject | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._task = task
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def task(self) -> TaskObject:
        return _resolve(self._task)

    def _scored(self, completions: list[str], samples: list[Sample]):
        """(reply, sample) pairs of this metric's task that have a ground truth; a question asked under a cyclic
        option shift other than 0 (``data.qa_shifts``) counts only in :class:`CircularAccuracy`."""
        task = self.task
        return [(c, s) for c, s in zip(completions, samples)
                if task.owns(s) and task.truth(s) is not None and not s.extra.get("shift")]

    def _add(self, hits: float, total: float) -> None:
        self.hits += hits
        self.total += total

    def compute(self) -> torch.Tensor:
        value = self.hits / self.total if self.total > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        return value.float()


class AnswerAccuracy(_Ratio):
    """Share of replies whose parsed answer equals the truth (the task's own accuracy), e.g. QA accuracy.

    Only the task's samples with a ground truth count; unparseable or ambiguous replies count as wrong.
    """

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        kept = self._scored(completions, samples)
        self._add(sum(self.task.accuracy(c, s) for c, s in kept), len(kept))


class ChoiceAccuracy(AnswerAccuracy):
    """Multiple-choice accuracy (:class:`AnswerAccuracy` of the ``qa`` task unless another task is given)."""

    def __init__(self, task: str | TaskObject = "qa", **kwargs) -> None:
        super().__init__(task, **kwargs)


class CircularAccuracy(Metric):
    """Share of questions answered right under every cyclic shift of their options (docs/scoring.md).

    Needs the questions asked under all n shifts (``data.qa_shifts: all``); a question missing a shift counts
    wrong. States are concatenated (row key, shift, right) triples, so a question whose shifts land in different
    batches or DDP ranks is judged on all of them.

    Args:
        task: the multiple-choice task (name or object).
        initial: judge the initial answer of a reflecting reply (the answer before ``<reflect>``; a reply that does
            not reflect counts with its only answer, as :class:`vau.reflect_metrics.InitialScore` does), so a policy
            that answers wrong first on purpose shows here under every option order.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, task: str | TaskObject = "qa", initial: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self._task = task
        self.initial = bool(initial)
        for name in ("keys", "shifts", "right", "sizes"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    @property
    def task(self) -> TaskObject:
        return _resolve(self._task)

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        import zlib

        task = self.task
        kept = [(c, s) for c, s in zip(completions, samples) if task.owns(s) and task.truth(s) is not None]
        if not kept:
            return
        def key(s: Sample) -> int:  # the question, whatever order its options were shown in
            return zlib.crc32(f"{s.video}|{s.row}|{s.question}".encode()) | (int(s.row or 0) << 32)

        self.keys.append(torch.tensor([key(s) for _, s in kept], dtype=torch.int64))
        self.shifts.append(torch.tensor([int(s.extra.get("shift", 0)) for _, s in kept], dtype=torch.int64))
        self.right.append(torch.tensor([self._score(task, c, s) >= 1.0 for c, s in kept], dtype=torch.int64))
        self.sizes.append(torch.tensor([len(s.options) for _, s in kept], dtype=torch.int64))

    def _score(self, task: TaskObject, reply: str, sample: Sample) -> float:
        score = task.initial_accuracy(reply, sample) if self.initial else None
        return task.accuracy(reply, sample) if score is None else score

    def compute(self) -> torch.Tensor:
        def flat(state):
            return torch.cat(state) if isinstance(state, list) and state else (
                state if isinstance(state, torch.Tensor) else torch.zeros(0, dtype=torch.int64))

        keys, shifts, right, sizes = flat(self.keys), flat(self.shifts), flat(self.right), flat(self.sizes)
        if not len(keys):
            return torch.tensor(float("nan"))
        rows: dict[int, tuple[set, bool, int]] = {}
        for k, sh, ok, n in zip(keys.tolist(), shifts.tolist(), right.tolist(), sizes.tolist()):
            seen, all_right, _ = rows.get(k, (set(), True, n))
            rows[k] = (seen | {sh}, all_right and bool(ok), n)
        hits = sum(all_right and len(seen) >= n for seen, all_right, n in rows.values())
        return torch.tensor(hits / len(rows), dtype=torch.float32)


class FormatRate(_Ratio):
    """Fraction of replies in their task's strict tag format (e.g. ``<think>..</think><answer>..</answer>``)."""

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        tasks = [task_of(s) if _tags(s) else None for s in samples]
        self._add(sum(t.follows_format(c) for c, t in zip(completions, tasks) if t is not None),
                  sum(1 for t in tasks if t is not None))


def _tags(sample: Sample) -> tuple[str, ...]:
    task = task_of(sample)
    return tuple(task.format_tags) if task is not None else ()


# ------------------------------------------------------------------------------------ temporal grounding ----
class _Temporal(_Ratio):
    """Base of the grounding metrics: (parsed interval, truth) pairs of normal or anomalous clips."""

    def __init__(self, task: str | TaskObject = "tag", **kwargs) -> None:
        super().__init__(task, **kwargs)

    def _pairs(self, completions: list[str], samples: list[Sample], normal: bool):
        task = self.task
        return [(task.parse(c, s), task.truth(s)) for c, s in self._scored(completions, samples)
                if is_normal_interval(task.truth(s)) == normal]


class MeanIoU(_Temporal):
    """Mean temporal IoU over anomalous clips with a known interval (the paper's mIoU); no interval = IoU 0."""

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        pairs = self._pairs(completions, samples, normal=False)
        self._add(sum(0.0 if p is None else interval_iou(p, t) for p, t in pairs), len(pairs))


class RecallAtIoU(_Temporal):
    """Fraction of anomalous clips with a known interval whose reply reaches IoU >= ``threshold`` (R@threshold)."""

    def __init__(self, threshold: float = 0.5, task: str | TaskObject = "tag", **kwargs) -> None:
        super().__init__(task, **kwargs)
        self.threshold = float(threshold)

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        pairs = self._pairs(completions, samples, normal=False)
        self._add(sum(p is not None and interval_iou(p, t) >= self.threshold for p, t in pairs), len(pairs))


class FalseAlarmRate(_Temporal):
    """Fraction of normal clips (truth [0, 0]) whose reply is not the normal answer [0, 0]; lower is better.

    A reply without a parseable interval counts as a false alarm, like a missing answer counts as wrong elsewhere.
    """

    higher_is_better = False

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        pairs = self._pairs(completions, samples, normal=True)
        self._add(sum(not is_normal_interval(p) for p, _ in pairs), len(pairs))


# ---------------------------------------------------------------------------------------- classification ----
class BinaryAnomalyAccuracy(_Ratio):
    """Anomalous-vs-normal accuracy: any anomaly class counts as "anomalous" (VAU-R1's binary accuracy).

    For the ``cls`` task (default) it reads the anomalous call out of the class reply; for ``cls_binary`` the
    reply is the call itself.
    """

    def __init__(self, task: str | TaskObject = "cls", **kwargs) -> None:
        super().__init__(task, **kwargs)

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        task = self.task
        kept = [(c, s) for c, s in zip(completions, samples) if task.owns(s) and task.anomalous_truth(s) is not None]
        self._add(sum(task.anomalous_reply(c, s) is task.anomalous_truth(s) for c, s in kept), len(kept))


class BinaryFalseAlarmRate(_Ratio):
    """Fraction of normal clips whose classification reply does not call them normal; lower is better.

    Like :class:`FalseAlarmRate` for TAG, a reply that says neither anomalous nor normal counts as a false alarm.
    The denominator is the task's samples whose truth is normal (``Task.anomalous_truth`` is False).
    """

    higher_is_better = False

    def __init__(self, task: str | TaskObject = "cls", **kwargs) -> None:
        super().__init__(task, **kwargs)

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        task = self.task
        kept = [(c, s) for c, s in zip(completions, samples) if task.owns(s) and task.anomalous_truth(s) is False]
        self._add(sum(task.anomalous_reply(c, s) is not False for c, s in kept), len(kept))


class _Confusion(Metric):
    """Confusion counts over a fixed class list; the last row/column is "none of the listed classes".

    A truth outside ``classes`` lands in the last row, a reply naming no listed class in the last column; a
    reply that names an unlisted truth exactly still counts as correct in ``hits``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, classes: Sequence[str] = ANOMALY_CLASSES, task: str | TaskObject = "cls", **kwargs) -> None:
        super().__init__(**kwargs)
        self.classes = tuple(classes)
        self._task = task
        size = len(self.classes) + 1
        self.add_state("confusion", default=torch.zeros(size, size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _index(self, name: str | None) -> int:
        listed = canonical_class(name, self.classes) if name else None
        return self.classes.index(listed) if listed else len(self.classes)

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        task = _resolve(self._task)
        for text, sample in zip(completions, samples):
            truth = task.truth(sample) if task.owns(sample) else None
            if truth is None:
                continue
            predicted = parse_class(text, class_candidates(truth, self.classes))
            self.confusion[self._index(truth), self._index(predicted)] += 1
            self.hits += float(predicted is not None and normalize_label(predicted) == normalize_label(truth))
            self.total += 1


class ClassAccuracy(_Confusion):
    """Accuracy of the named class on CLS samples (the paper's multi-class accuracy)."""

    def compute(self) -> torch.Tensor:
        return (self.hits / self.total).float() if self.total > 0 else torch.tensor(float("nan"))


class ClassMacroF1(_Confusion):
    """Macro F1 over the listed classes that occur in the truth or the replies (unparseable = wrong class)."""

    def compute(self) -> torch.Tensor:
        k = len(self.classes)
        matrix = self.confusion
        tp = matrix.diagonal()[:k]
        predicted, actual = matrix.sum(0)[:k], matrix.sum(1)[:k]
        present = (predicted + actual) > 0
        if not present.any():
            return torch.tensor(float("nan"))
        f1 = 2 * tp / (predicted + actual).clamp(min=1)
        return f1[present].mean().float()


class PerClassAccuracy(_Confusion):
    """Per-class recall (accuracy within each true class), a vector over ``classes``; NaN for absent classes."""

    def compute(self) -> torch.Tensor:
        k = len(self.classes)
        actual = self.confusion.sum(1)[:k]
        recall = self.confusion.diagonal()[:k] / actual.clamp(min=1)
        return torch.where(actual > 0, recall, torch.full_like(recall, float("nan"))).float()

    def support(self) -> torch.Tensor:
        """Samples of each listed class seen by this process (torchmetrics unsyncs states after ``compute``)."""
        return self.confusion.sum(1)[: len(self.classes)]
