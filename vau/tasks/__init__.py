"""Tasks: every question vau asks of a clip is a registered :class:`Task` (one file each).

Built-in tasks (``python -m vau list`` prints them with their row rules):

- ``qa`` (:mod:`vau.tasks.qa`): multiple-choice QA, the reply is an option letter.
- ``tag`` (:mod:`vau.tasks.tag`): temporal anomaly grounding, the reply is ``[start, end]`` in seconds.
- ``cls`` / ``cls_binary`` (:mod:`vau.tasks.cls`): the anomaly class (20-way), or Anomaly / Normal.
- ``describe`` (:mod:`vau.tasks.describe`): description + rationale (SFT only).
- ``qa_reflect``, ``tag_reflect``, ``cls_reflect``, ``cls_binary_reflect`` (:mod:`vau.tasks.reflect`): the scored
  tasks answered with an initial answer, a self-reflection and a final answer (SRVAU-R1).

One annotation row can yield several samples, one per task (a *view* of the annotations,
:mod:`vau.datamodules.views`). A plugin module adds a task by registering a :class:`Task` subclass in
:data:`vau.registry.TASKS`; listing the module in the config key ``plugins`` makes it usable as ``data.task``.

Example:
    >>> task = get_task("tag")
    >>> task.parse("<answer>[2, 7.5]</answer>", None)
    (2.0, 7.5)
    >>> task.accuracy("<answer>[2, 6]</answer>", Sample(task="tag", video="v.mp4", interval=(4.0, 8.0)))
    0.3333333333333333
"""

from __future__ import annotations

from vau.data.annotations import ANOMALY_CLASSES
from vau.data.sample import Sample, ViewOptions
from vau.data.synthetic import corpus as synthetic_corpus
from vau.registry import TASKS, RegistryError
from vau.tasks import cls, describe, qa, reflect, tag  # noqa: F401  (importing registers the built-in tasks)
from vau.tasks.base import THINK_INSTRUCTION, Task

__all__ = ["ANOMALY_CLASSES", "TASKS", "THINK_INSTRUCTION", "Sample", "Task", "ViewOptions", "get_task", "task_names",
           "task_of", "tokenizer_corpus"]

def get_task(name: str) -> Task:
    """The task registered as ``name`` (one instance per name); an unknown name fails listing the known ones."""
    try:
        return TASKS.instance(name)
    except RegistryError as err:
        raise RegistryError(f"{err} (config key data.task)") from None


def task_of(sample) -> Task | None:
    """The task of a sample, or None for a name no loaded module registered (rewards then return None)."""
    name = getattr(sample, "task", None)
    if not isinstance(name, str) or name not in TASKS:
        return None
    return TASKS.instance(name)


BUILTIN_TASKS = ("qa", "tag", "cls", "cls_binary", "describe")  # in the paper's order


def task_names() -> list[str]:
    """Every registered task: the built-in ones in the paper's order, then plugin tasks by name (tables use it)."""
    return [*BUILTIN_TASKS, *(n for n in TASKS.names() if n not in BUILTIN_TASKS)]


# The tiny tokenizer's corpus must not change when plugins add tasks: its merges decide the tiny model's weights.
CORPUS_TASKS = BUILTIN_TASKS


def tokenizer_corpus() -> list[str]:
    """Text the tiny test tokenizer is trained on: every template with placeholder content, class names, digits."""
    demo = Sample(
        task="qa", video="x.mp4", question="What happens in the video?",
        options=("Nothing unusual happens", "A fire breaks out", "A fight starts", "Someone steals a bag"),
        answer="B", interval=(2.5, 7.0), anomaly_class="Fire", description="A red object appears.",
        reasoning="A red object appears from 2.5 to 7.0 seconds.",
    )
    lines = []
    for name in CORPUS_TASKS:
        lines += get_task(name).corpus(demo)
    lines += list(ANOMALY_CLASSES) + [" ".join(ANOMALY_CLASSES).lower()]
    lines += [f"[{a}.{b}, {a + 1}.{b}]" for a in range(60) for b in range(10)]
    lines += ["system", "user", "assistant", "The answer is", "Option", "seconds", "normal", "anomaly"]

    return lines + synthetic_corpus()
