"""Format rewards: does a reply use its task's tags (``vau.tasks.Task.format_tags``)?

A task without format tags (``describe``) gets None. Tag content must be non-blank, so an empty
``<answer></answer>`` earns nothing here either.
"""

from __future__ import annotations

from vau.parsing import extract_tag
from vau.registry import REWARDS
from vau.tasks import Sample, task_of


def task_tags(sample: Sample) -> tuple[str, ...]:
    """The sample's format tags; () for a task without tags or an unknown task."""
    task = task_of(sample)
    return tuple(task.format_tags) if task is not None else ()


@REWARDS.register("format")
def format_reward(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
    """1 when the reply is exactly the task's tags in order with non-blank content, else 0; range [0, 1].

    The task decides (``Task.follows_format``); e.g. ``tag_glue`` also needs an interval inside ``<glue>``.

    Example:
        >>> qa = Sample(task="qa", video="v.mp4", answer="B")
        >>> format_reward(["<think>smoke</think><answer>B</answer>", "B"], [qa, qa])
        [1.0, 0.0]
    """
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        task = task_of(sample)
        out.append(float(task.follows_format(text)) if task is not None and task.format_tags else None)
    return out


@REWARDS.register("format_lenient")
def format_lenient(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
    """Fraction of the task's tags present with non-blank content, anywhere and in any order; range [0, 1].

    Partial credit for a model that is still learning the format; text around the tags is not penalised.
    """
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        tags = task_tags(sample)
        out.append(sum(bool(extract_tag(text, t)) for t in tags) / len(tags) if tags else None)
    return out
