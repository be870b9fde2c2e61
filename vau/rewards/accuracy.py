"""Answer-accuracy rewards: the multiple-choice letter and the anomaly class, read by :mod:`vau.parsing`.

Both score 0 for an answer that is missing, empty or ambiguous ("A or B", every option, two classes), so listing
several answers never pays.
"""

from __future__ import annotations

from collections.abc import Sequence

from vau.parsing import canonical_class, is_normal_class, normalize_label, parse_anomalous, parse_choice, parse_class
from vau.registry import REWARDS
from vau.tasks import ANOMALY_CLASSES, Sample


@REWARDS.register("choice_accuracy")
def choice_accuracy(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
    """1 when the reply's single option letter is the correct one, else 0 (QA samples only); range [0, 1]."""
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        if sample.task != "qa" or sample.answer is None:
            out.append(None)
            continue
        out.append(float(parse_choice(text, sample.options) == sample.answer))
    return out


def class_candidates(truth: str, classes: Sequence[str] = ANOMALY_CLASSES) -> tuple[str, ...]:
    """``classes`` plus the ground-truth class when the list does not spell it (so a correct reply can match)."""
    classes = tuple(classes)
    return classes if canonical_class(truth, classes) else (*classes, truth)


@REWARDS.register("class_match")
def class_match(completions: list[str], samples: list[Sample], binary: bool = False, **ctx) -> list[float | None]:
    """1 when the reply names the right anomaly class (binary=True: right anomalous/normal call); range [0, 1].

    Args:
        binary: score only "anomalous or normal" (any anomaly class counts as anomalous), as VAU-R1's binary
            accuracy; otherwise the class itself must match (the 20-way accuracy).
    """
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        truth = sample.anomaly_class or ""
        if sample.task != "cls" or not normalize_label(truth):
            out.append(None)
            continue
        candidates = class_candidates(truth)
        if binary:
            out.append(float(parse_anomalous(text, candidates) is (not is_normal_class(truth))))
        else:
            predicted = parse_class(text, candidates)
            out.append(float(predicted is not None and normalize_label(predicted) == normalize_label(truth)))
    return out
