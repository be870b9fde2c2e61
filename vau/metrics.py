"""torchmetrics metrics over parsed model output. Every state reduces by sum, so DDP sync is exact."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from vau.parsing import parse_choice, strict_format
from vau.tasks import Sample, get_task


class _Ratio(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def _add(self, hits: float, total: float) -> None:
        self.hits += hits
        self.total += total

    def compute(self) -> torch.Tensor:
        return self.hits / self.total if self.total > 0 else torch.tensor(float("nan"))


class ChoiceAccuracy(_Ratio):
    """Multiple-choice accuracy: a reply counts when its single parsed letter equals the correct one.

    Unparseable or ambiguous replies count as wrong (they stay in the denominator).
    """

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        kept = [(c, s) for c, s in zip(completions, samples) if s.answer is not None]
        self._add(sum(parse_choice(c, s.options) == s.answer for c, s in kept), len(kept))


class FormatRate(_Ratio):
    """Fraction of replies in the task's strict tag format (e.g. ``<think>..</think><answer>..</answer>``)."""

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        tags = [get_task(s.task).format_tags for s in samples]
        self._add(sum(strict_format(c, t) for c, t in zip(completions, tags) if t), sum(1 for t in tags if t))


def task_metrics(task: str) -> dict[str, Metric]:
    """The metrics reported for ``task`` during validation/test, keyed by log name."""
    metrics: dict[str, Metric] = {"format_rate": FormatRate()}
    if task == "qa":
        metrics["qa_accuracy"] = ChoiceAccuracy()
    return metrics
