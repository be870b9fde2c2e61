"""Description metrics: corpus BLEU-4 and ROUGE-L of free-text replies against the row's reference text.

HIVAU-70k (Holmes-VAU) and UCA report caption metrics; the ``describe`` task is scored with the two of them that a
maintained library computes without a Java runtime or a downloaded corpus: torchmetrics' ``SacreBLEUScore``
(BLEU-4, the ``13a`` tokenizer of SacreBLEU, corpus-level: n-gram counts are summed over all replies before the
geometric mean, so a DDP sync of the sums gives the single-process value) and ``rouge_score`` (ROUGE-L F-measure,
the mean over replies). METEOR (WordNet, or Java in pycocoevalcap) and CIDEr (pycocoevalcap, corpus IDF) are not
computed: no maintained library here provides them offline. Papers' numbers from pycocoevalcap tokenize with the
PTB tokenizer, so BLEU here is close to, not equal to, theirs.

The reference of a reply is what the task returns from :meth:`vau.tasks.Task.reference_text` (``describe``: the
description, then the rationale where the row has one: the text SFT teaches); the reply is read through
:meth:`vau.tasks.Task.judged_text` (the ``<think>`` text, or the reply without tags), whitespace collapsed.

Example:
    >>> from vau.data import Sample
    >>> row = Sample(task="describe", video="v.mp4", description="A man breaks the window of a parked car.")
    >>> bleu, rouge = DescriptionBLEU(), DescriptionRougeL()
    >>> for metric in (bleu, rouge):
    ...     metric.update(["A man breaks the window of a parked car."], [row])
    >>> round(float(bleu.compute()), 4), round(float(rouge.compute()), 4)
    (1.0, 1.0)
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.text import rouge_score
from torchmetrics.text import SacreBLEUScore

from vau.data.sample import Sample
from vau.metrics import TaskObject
from vau.metrics import _resolve as _task


def text_pairs(task: TaskObject, completions: list[str], samples: list[Sample]) -> tuple[list[str], list[str]]:
    """(reply texts, reference texts) of ``task``'s samples that have a reference; whitespace collapsed."""
    preds, refs = [], []
    for reply, sample in zip(completions, samples):
        reference = task.reference_text(sample) if task.owns(sample) else None
        if reference:
            preds.append(" ".join(task.judged_text(reply or "").split()))
            refs.append(" ".join(reference.split()))
    return preds, refs


class DescriptionBLEU(SacreBLEUScore):
    """Corpus BLEU-4 (SacreBLEU ``13a`` tokens, no smoothing) of a text task's replies; NaN before any reply."""

    higher_is_better = True
    full_state_update = False  # update reads only its own batch (also lets merge_state pool two processes)

    def __init__(self, task: str | TaskObject = "describe", **kwargs) -> None:
        super().__init__(n_gram=4, tokenize="13a", **kwargs)
        self._task = task
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, completions: list[str], samples: list[Sample]) -> None:  # type: ignore[override]
        preds, refs = text_pairs(_task(self._task), completions, samples)
        if preds:
            super().update(preds, [[r] for r in refs])
        self.total += len(preds)

    def compute(self) -> torch.Tensor:
        if self.total == 0:
            return torch.tensor(float("nan"))
        return super().compute().float()


class DescriptionRougeL(Metric):
    """Mean ROUGE-L F-measure of a text task's replies (torchmetrics' ``rouge_score``, lower-cased words); NaN
    before any reply. The state is a sum and a count (not ``ROUGEScore``'s per-reply lists, whose DDP sync of
    lists of different lengths per rank fails under gloo)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, task: str | TaskObject = "describe", **kwargs) -> None:
        super().__init__(**kwargs)
        self._task = task
        self.add_state("f_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, completions: list[str], samples: list[Sample]) -> None:
        preds, refs = text_pairs(_task(self._task), completions, samples)
        for pred, ref in zip(preds, refs):
            self.f_sum += float(rouge_score(pred, ref, rouge_keys="rougeL")["rougeL_fmeasure"])
        self.total += len(preds)

    def compute(self) -> torch.Tensor:
        if self.total == 0:
            return torch.tensor(float("nan"))
        return (self.f_sum / self.total).float()
