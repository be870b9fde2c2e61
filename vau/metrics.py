"""torchmetrics metrics over parsed model output, following VAU-R1's evaluation protocol.

Every state is a sum (counts, sums of IoU, a confusion matrix), so DDP synchronisation is exact: the synced
value equals the single-process value over the union of the data. Each metric keeps its denominator in the
``total`` state (score prints it as n). All parsing goes through :mod:`vau.parsing`, the same code the rewards
use; a reply that cannot be parsed counts as wrong and stays in the denominator.

Denominators (docs/rewards.md): QA accuracy over QA samples with a correct letter; mIoU and R@k over anomalous
TAG samples with a known interval; the false-alarm rate over normal TAG samples (truth [0, 0]); classification
over CLS samples with a class.

Example:
    >>> metric = ChoiceAccuracy()
    >>> metric.update(["<answer>B</answer>"], [qa_sample])  # doctest: +SKIP
    >>> float(metric.compute())  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from vau.parsing import (
    canonical_class,
    has_strict_format,
    interval_iou,
    is_normal_class,
    is_normal_interval,
    normalize_label,
    parse_anomalous,
    parse_choice,
    parse_class,
    parse_interval,
)
from vau.rewards.accuracy import class_candidates
from vau.rewards.temporal import known_interval
from vau.tasks import ANOMALY_CLASSES, Sample, get_task

RECALL_THRESHOLDS = (0.3, 0.5, 0.7)


class _Ratio(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, hits: float, total: float) -> None:
        self.hits += hits
        self.total += total

    def compute(self) -> torch.Tensor:
        value = self.hits / self.total if self.total > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        return value.float()


class ChoiceAccuracy(_Ratio):
    """Multiple-choice accuracy: a reply counts when its single parsed letter equals the correct one.

    Only QA samples with a correct letter count; unparseable or ambiguous replies count as wrong.
    """

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        kept = [(c, s) for c, s in zip(completions, samples) if s.task == "qa" and s.answer is not None]
        self._add(sum(parse_choice(c, s.options) == s.answer for c, s in kept), len(kept))


class FormatRate(_Ratio):
    """Fraction of replies in the task's strict tag format (e.g. ``<think>..</think><answer>..</answer>``)."""

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        tags = [_tags(s) for s in samples]
        self._add(sum(has_strict_format(c, t) for c, t in zip(completions, tags) if t), sum(1 for t in tags if t))


def _tags(sample: Sample) -> tuple[str, ...]:
    try:
        return tuple(get_task(sample.task).format_tags)
    except KeyError:
        return ()


# ------------------------------------------------------------------------------------ temporal grounding ----
def _tag_pairs(completions: list[str], samples: list[Sample], normal: bool):
    """(parsed reply interval, truth) for TAG samples with a known interval, normal or anomalous ones only."""
    for text, sample in zip(completions, samples):
        truth = known_interval(sample)  # the rewards' test: a TAG sample with a valid known interval
        if truth is not None and is_normal_interval(truth) == normal:
            yield parse_interval(text), truth


class MeanIoU(_Ratio):
    """Mean temporal IoU over anomalous clips with a known interval (the paper's mIoU); no interval = IoU 0."""

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        pairs = list(_tag_pairs(completions, samples, normal=False))
        self._add(sum(0.0 if p is None else interval_iou(p, t) for p, t in pairs), len(pairs))


class RecallAtIoU(_Ratio):
    """Fraction of anomalous clips with a known interval whose reply reaches IoU >= ``threshold`` (R@threshold)."""

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        pairs = list(_tag_pairs(completions, samples, normal=False))
        self._add(sum(p is not None and interval_iou(p, t) >= self.threshold for p, t in pairs), len(pairs))


class FalseAlarmRate(_Ratio):
    """Fraction of normal clips (truth [0, 0]) whose reply is not the normal answer [0, 0]; lower is better.

    A reply without a parseable interval counts as a false alarm, like a missing answer counts as wrong elsewhere.
    """

    higher_is_better = False

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        pairs = list(_tag_pairs(completions, samples, normal=True))
        self._add(sum(not is_normal_interval(p) for p, _ in pairs), len(pairs))


# ---------------------------------------------------------------------------------------- classification ----
class BinaryAnomalyAccuracy(_Ratio):
    """Anomalous-vs-normal accuracy on CLS samples: any anomaly class counts as "anomalous" (VAU-R1's binary acc)."""

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        kept = [(c, s) for c, s in zip(completions, samples) if s.task == "cls" and normalize_label(s.anomaly_class)]
        hits = sum(parse_anomalous(c, class_candidates(s.anomaly_class)) is (not is_normal_class(s.anomaly_class))
                   for c, s in kept)
        self._add(hits, len(kept))


class _Confusion(Metric):
    """Confusion counts over a fixed class list; the last row/column is "none of the listed classes".

    A truth outside ``classes`` lands in the last row, a reply naming no listed class in the last column; a
    reply that names an unlisted truth exactly still counts as correct in ``hits``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, classes: Sequence[str] = ANOMALY_CLASSES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.classes = tuple(classes)
        size = len(self.classes) + 1
        self.add_state("confusion", default=torch.zeros(size, size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _index(self, name: str | None) -> int:
        listed = canonical_class(name, self.classes) if name else None
        return self.classes.index(listed) if listed else len(self.classes)

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        for text, sample in zip(completions, samples):
            truth = sample.anomaly_class or ""
            if sample.task != "cls" or not normalize_label(truth):
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


def task_metrics(task: str, classes: Sequence[str] = ANOMALY_CLASSES) -> dict[str, Metric]:
    """The scalar metrics reported for ``task`` during validation/test, keyed by log name.

    Args:
        task: qa | tag | cls (other tasks get the format rate only).
        classes: the class list of the CLS confusion-based metrics.
    """
    metrics: dict[str, Metric] = {"format_rate": FormatRate()}
    if task == "qa":
        metrics["qa_accuracy"] = ChoiceAccuracy()
    elif task == "tag":
        metrics["tag_miou"] = MeanIoU()
        for threshold in RECALL_THRESHOLDS:
            metrics[f"tag_r{round(threshold * 100)}"] = RecallAtIoU(threshold)
        metrics["tag_false_alarm"] = FalseAlarmRate()
    elif task == "cls":
        metrics["cls_binary_accuracy"] = BinaryAnomalyAccuracy()
        metrics["cls_accuracy"] = ClassAccuracy(classes)
        metrics["cls_macro_f1"] = ClassMacroF1(classes)
    return metrics
