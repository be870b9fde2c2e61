"""Metrics of the reflect tasks (:mod:`vau.tasks.reflect`): what the reflection did to the answer.

Like :mod:`vau.metrics`, every state is a sum, so DDP synchronisation is exact, and each metric counts only its
task's samples with a ground truth (``total`` is the denominator ``score`` prints as n).

- :class:`InitialScore`: mean score of the initial answer (accuracy; TAG: IoU over anomalous clips, the initial
  mIoU). A reply that does not reflect has no separate initial answer: its only answer counts as initial too, so
  the initial and final scores of a model that never reflects are equal (and comparable with a non-reflect run).
- :class:`WrongToRight` / :class:`RightToWrong`: Δ(i→c), the fraction of samples whose initial answer is wrong
  and final answer right, and Δ(c→i), right then wrong. "Right" is ``Task.is_correct(score)`` (exact answers; TAG: IoU >= 0.5). A reply
  that does not reflect changes nothing and counts in the denominator only.
- :class:`ReflectRate`: the share of the task's replies holding a non-blank ``<reflect>`` block.

Example:
    >>> from vau.tasks import Sample, get_task
    >>> task = get_task("qa_reflect")
    >>> qa = Sample(task="qa_reflect", video="v.mp4", options=("a", "b", "c", "d"), answer="B")
    >>> metric = WrongToRight(task)
    >>> metric.update(["<think>x</think><answer>A</answer><reflect>no</reflect><think>y</think><answer>B</answer>",
    ...                "<answer>B</answer>"], [qa, qa])
    >>> float(metric.compute())
    0.5
"""

from __future__ import annotations

from vau.metrics import _Ratio
from vau.parsing import is_normal_interval, reflects


class InitialScore(_Ratio):
    """Mean score of the initial answers (the final answer when a reply does not reflect).

    Args:
        task: a reflect task.
        anomalous_only: count only samples whose truth is not the normal interval [0, 0] (TAG's mIoU protocol).
    """

    def __init__(self, task, anomalous_only: bool = False, **kwargs) -> None:
        super().__init__(task, **kwargs)
        self.anomalous_only = bool(anomalous_only)

    def update(self, completions: list[str], samples: list) -> None:
        task = self.task
        kept = [(c, s) for c, s in self._scored(completions, samples)
                if not (self.anomalous_only and is_normal_interval(task.truth(s)))]
        total = 0.0
        for reply, sample in kept:
            score = task.initial_accuracy(reply, sample)
            total += task.accuracy(reply, sample) if score is None else score
        self._add(total, len(kept))


class _Correction(_Ratio):
    """Counts replies whose initial answer is ``before``-correct and whose final answer is ``after``-correct."""

    before = after = True

    def update(self, completions: list[str], samples: list) -> None:
        task = self.task
        kept = self._scored(completions, samples)
        hits = 0
        for reply, sample in kept:
            initial = task.initial_accuracy(reply, sample)
            if initial is None:
                continue
            hits += (task.is_correct(initial) is self.before
                     and task.is_correct(task.accuracy(reply, sample)) is self.after)
        self._add(float(hits), len(kept))


class WrongToRight(_Correction):
    """Δ(i→c): fraction of the task's samples with a ground truth whose initial answer is wrong and final right."""

    higher_is_better = None  # no best value on its own: a model right from the start needs no correction
    before, after = False, True


class RightToWrong(_Correction):
    """Δ(c→i): fraction of the task's samples with a ground truth whose initial answer is right and final wrong."""

    higher_is_better = False
    before, after = True, False


class ReflectRate(_Ratio):
    """Share of the task's replies (samples with a ground truth) that hold a non-blank ``<reflect>`` block."""

    def update(self, completions: list[str], samples: list) -> None:
        kept = self._scored(completions, samples)
        self._add(float(sum(reflects(c) for c, _ in kept)), len(kept))


__all__ = ["InitialScore", "ReflectRate", "RightToWrong", "WrongToRight"]
