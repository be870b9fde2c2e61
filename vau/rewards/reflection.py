"""Rewards of reflection-aware replies (SRVAU-R1; the reflect tasks of :mod:`vau.tasks.reflect`).

The format reward (``format``) already asks each sample's task for its tags, so it checks the reflect format
``<think><answer><reflect><think><answer>``; the ``accuracy`` / ``choice_accuracy`` / ``class_match`` /
``temporal_iou`` rewards score the final (last) answer. The rewards here read the initial answer too, through
``Task.parse_initial`` / ``Task.initial_accuracy`` (the answer before the first ``<reflect>`` block; any task's
two-pass reply under ``generation.self_correct`` has one too), and return None for replies without one.
"""

from __future__ import annotations

import math

from vau.parsing import _tag_spans  # linear pairing of tags (a regex is quadratic on unclosed ones)
from vau.registry import REWARDS
from vau.rewards.length import finite_number
from vau.tasks import Sample, task_of


def _reflect_task(sample: Sample):
    task = task_of(sample)
    return task if task is not None and callable(getattr(task, "initial_accuracy", None)) else None


def _unit(value, default: float) -> float:
    """A keyword weight clipped to [0, 1] (so the documented range holds whatever a config passes)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return min(1.0, max(0.0, value)) if math.isfinite(value) else default


@REWARDS.register("self_correction")
def self_correction(completions: list[str], samples: list[Sample], gain: float = 1.0, loss: float = 1.0,
                    **ctx) -> list[float | None]:
    """+gain when the reflection turns a wrong initial answer right, -loss right -> wrong, else 0; range [-1, 1].

    "Right" is the task's own criterion (``Task.is_correct``: exact answers; TAG: IoU >= 0.5). None for samples
    without a ground truth, and for replies that do not reflect (no ``<reflect>`` block or no answer before it).

    Args:
        gain: reward of a wrong -> right correction, clipped to [0, 1].
        loss: penalty of a right -> wrong change, clipped to [0, 1].
    """
    gain, loss = _unit(gain, 1.0), _unit(loss, 1.0)
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        task = _reflect_task(sample)
        initial = task.initial_accuracy(text, sample) if task is not None else None
        if initial is None:
            out.append(None)
            continue
        before, after = task.is_correct(initial), task.is_correct(task.accuracy(text, sample))
        out.append(gain if after and not before else -loss if before and not after else 0.0)
    return out


@REWARDS.register("initial_accuracy")
def initial_accuracy(completions: list[str], samples: list[Sample], single_answer: bool = False,
                     **ctx) -> list[float | None]:
    """Score of the initial answer, the one before the reflection (the task's accuracy: 1/0, TAG: IoU); range [0, 1].

    ``self_correction`` alone pays a policy for opening with a wrong answer and correcting it: on the CPU demo GRPO
    learned exactly that (docs/experiments.md, "learning proof of the reflect demo"). Weighted at least as much as
    the self-correction gain, this term makes right -> right pay at least as much as wrong -> right, so the first
    answer is worth getting right (SCoRe, arXiv 2409.12917, rewards both attempts for the same reason). None for
    samples without a ground truth and for replies that do not reflect.

    Args:
        single_answer: score a reply that does not reflect by its only answer, which is its first one. Look-again
            rewards need it: a reply may answer once or look and answer again, and without it a right reply that did
            not look would earn no first-answer pay, so looking and correcting would pay more.
    """
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        task = _reflect_task(sample)
        score = task.initial_accuracy(text, sample) if task is not None else None
        if score is None and single_answer is True and task is not None and task.truth(sample) is not None \
                and task.initial_reply(text) is None:
            score = task.accuracy(text, sample)
        out.append(None if score is None else min(1.0, max(0.0, float(score))))
    return out


initial_accuracy.turn = "first"  # module.grpo.turn_credit=per_turn credits it to the first answer's tokens


@REWARDS.register("iou_gain")
def iou_gain(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
    """Final IoU minus initial IoU of a reflecting TAG reply; range [-1, 1].

    None for samples whose task does not answer with an interval or has no initial answer, for an unknown ground
    truth, and for replies that do not reflect. A missing interval scores IoU 0 on either side.
    """
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        task = _reflect_task(sample)
        if task is None or task.interval_truth(sample) is None:
            out.append(None)
            continue
        initial = task.initial_accuracy(text, sample)
        final = task.accuracy(text, sample) if initial is not None else None
        out.append(None if final is None else min(1.0, max(-1.0, float(final) - float(initial))))
    return out


@REWARDS.register("reflection_length")
def reflection_length(completions: list[str], samples: list[Sample], budget: int = 128, ramp: int = 128,
                      **ctx) -> list[float | None]:
    """0 while the <reflect> text is within ``budget`` words, then linearly down to -1 at budget + ramp; range [-1, 0].

    Counts whitespace-separated words of the reply's ``<reflect>`` block (all of them, if it has several), so it
    needs no tokenizer and behaves the same in training, evaluation and ``score``. None for samples of tasks
    without a reflection format; 0 for a reply without a reflection (the format reward covers that).

    Args:
        budget: words a reflection may use for free (>= 0).
        ramp: words over the budget at which the penalty reaches -1 (>= 1).
    """
    budget = max(0.0, finite_number(budget) if finite_number(budget) is not None else 128.0)
    ramp = max(1.0, finite_number(ramp) if finite_number(ramp) is not None else 128.0)
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        task = task_of(sample)
        if task is None or "reflect" not in tuple(task.format_tags):
            out.append(None)
            continue
        text = text if isinstance(text, str) else ""
        words = sum(len(text[start:end].split()) for _, start, end, _ in _tag_spans(text, "reflect"))
        out.append(-min(1.0, max(0.0, (words - budget) / ramp)))
    return out


@REWARDS.register("look_cost")
def look_cost(completions: list[str], samples: list[Sample], per_frame: float = 0.01, looked_frames=None,
              **ctx) -> list[float | None]:
    """Minus ``per_frame`` for every frame a reply was shown by looking again; range [-1, 0].

    GRPO passes ``looked_frames`` (one count per reply) when the run looks again (``module.generation.look_again``);
    None for every reply without it. A small cost makes a look worth its frames only where it changes the answer,
    so a policy that is right from its first frames learns not to look.

    Args:
        per_frame: the cost of one looked-at frame, clipped to [0, 1].
    """
    per_frame = _unit(per_frame, 0.01)
    counts = list(looked_frames) if looked_frames is not None else [None] * len(completions)
    out: list[float | None] = []
    for count in counts[: len(completions)]:
        frames = finite_number(count)
        out.append(None if frames is None else -min(1.0, per_frame * max(0.0, frames)))
    return out + [None] * (len(completions) - len(out))
