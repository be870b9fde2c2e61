"""Answer-accuracy rewards, read through each sample's task (:mod:`vau.tasks`) with :mod:`vau.parsing`.

All score 0 for an answer that is missing, empty or ambiguous ("A or B", every option, two classes), so listing
several answers never pays. Each asks the sample's task (plugin tasks included) and returns None where the task
makes no such answer.
"""

from __future__ import annotations

from vau.registry import REWARDS
from vau.tasks import Sample, task_of


@REWARDS.register("accuracy")
def accuracy(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
    """The task's own accuracy of each reply (1/0; temporal IoU for grounding); None without a truth; range [0, 1].

    Works for any task, a plugin task included: it calls ``Task.accuracy(reply, sample)``.
    """
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        task = task_of(sample)
        out.append(None if task is None else task.accuracy(text, sample))
    return out


@REWARDS.register("choice_accuracy")
def choice_accuracy(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
    """1 when the reply's single option letter is the correct one, else 0 (multiple-choice tasks only); range [0, 1]."""
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        task = task_of(sample)
        out.append(task.accuracy(text, sample) if task is not None and task.asks_options else None)
    return out


@REWARDS.register("class_match")
def class_match(completions: list[str], samples: list[Sample], binary: bool = False, **ctx) -> list[float | None]:
    """1 when the reply names the right anomaly class (binary=True: right anomalous/normal call); range [0, 1].

    Args:
        binary: score only "anomalous or normal" (any anomaly class counts as anomalous), as VAU-R1's binary
            accuracy; otherwise the class itself must match (the 20-way accuracy). On a task whose answer is only
            Anomaly / Normal (``cls_binary``) that call is the class, so it is scored either way.
    """
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        task = task_of(sample)
        out.append(None if task is None else task.class_score(text, sample, binary))  # Task.class_score
    return out


@REWARDS.register("anomaly_answer")
def anomaly_answer(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
    """1 when the reply's Anomaly / Normal call is right (tasks that make one: tag_glue, cls, cls_binary); range [0, 1].

    VAU-R1's third TAG reward. Reads the task's ``anomalous_reply`` (for ``tag_glue``: the ``<answer>`` content)
    against ``anomalous_truth``; None for tasks without such a call or a sample without the truth. An answer that
    says neither, or both ("Anomaly or Normal"), scores 0.
    """
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        task = task_of(sample)
        truth = task.anomalous_truth(sample) if task is not None and hasattr(task, "anomalous_truth") else None
        out.append(None if truth is None else float(task.anomalous_reply(text, sample) is truth))
    return out
