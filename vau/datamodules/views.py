"""Task views: which samples each task keeps from the annotations, in training and in evaluation.

Every task reads the same :class:`~vau.data.annotations.Annotation` rows; a *view* keeps the rows the
task can use and turns each into a :class:`~vau.tasks.Sample`. The rules (and why) belong to each task (:mod:`vau.tasks`);
this module adds the two config switches and the multi-task ``mixed`` view:

- ``data.views.tag_train_normal`` (default true): TAG training also keeps normal clips (target [0.0, 0.0]).
- ``data.views.tag_eval_normal`` (default false): TAG evaluation also keeps normal clips. Off by default
  because the benchmark protocol scores anomalous clips only (MSAD test: 120 TAG samples); turn it on to
  measure false alarms on normal clips, knowing the counts then differ from the paper's.
- ``data.task=mixed`` with ``data.mix.weights`` (``{qa: 1, tag: 1, cls: 1, describe: 0}``): one sample per kept
  (row, task) pair of every task with a positive weight. In training the weights are each task's share of an
  epoch of ``data.mix.epoch_size`` samples (default: all samples once); evaluation takes every sample once.

Example (the MSAD test file)::

    rows = read_rows("test_msad.csv")
    len(select(rows, "tag", train=False, options=ViewOptions()))     # 120
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from vau.data.annotations import Annotation
from vau.registry import TASKS
from vau.tasks import Sample, ViewOptions, get_task, task_names
from vau.tasks.base import DEFAULT_VIEWS

__all__ = ["MIXED", "ViewOptions", "build_samples", "drop_counts", "drop_reason", "is_mixed", "mix_weights",
           "select", "view_counts", "view_tasks"]

MIXED = "mixed"


def is_mixed(view: str) -> bool:
    """Whether a ``data.task`` value is the multi-task ``mixed`` view rather than one task."""
    return view == MIXED


def drop_reason(task: str, ann: Annotation, train: bool, options: ViewOptions = DEFAULT_VIEWS) -> str | None:
    """Why ``task`` does not use ``ann`` (for ``data stats`` and the DataModule's log), or None when it does."""
    return get_task(task).drop_reason(ann, train, options)


def select(rows: Iterable[Annotation], task: str, train: bool,
           options: ViewOptions = DEFAULT_VIEWS) -> list[Annotation]:
    """The rows ``task`` keeps, in file order."""
    spec = get_task(task)  # fail early, with the known names, on a typo
    return [a for a in rows if spec.keeps(a, train, options)]


def mix_weights(cfg: Mapping | None) -> dict[str, float]:
    """Validated ``data.mix.weights``: known tasks, finite weights >= 0, at least one positive."""
    weights = dict((cfg or {}).get("weights") or {})
    if not weights:
        raise ValueError("data.task=mixed needs data.mix.weights, e.g. {qa: 1.0, tag: 1.0, cls: 1.0, describe: 0.0}")
    out = {}
    for task, weight in weights.items():
        if task not in TASKS.names():
            raise ValueError(f"data.mix.weights.{task}: unknown task; known tasks: {', '.join(TASKS.names())}")
        weight = float(weight)
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"data.mix.weights.{task}={weight}: weights are finite numbers >= 0")
        out[task] = weight
    if not any(out.values()):
        raise ValueError("data.mix.weights are all 0: give at least one task a positive weight")
    return out


def view_tasks(task: str, mix: Mapping | None = None) -> list[str]:
    """The tasks a ``data.task`` value stands for: itself, or the positively weighted tasks of ``mixed``."""
    if is_mixed(task):
        return [t for t, w in mix_weights(mix).items() if w > 0]
    get_task(task)
    return [task]


def build_samples(rows: list[Annotation], task: str, train: bool, options: ViewOptions = DEFAULT_VIEWS,
                  resolve: Callable[[Annotation], str] | None = None, mix: Mapping | None = None) -> list[Sample]:
    """Samples of one task (or of every task of the ``mixed`` view, grouped by task in ``mix`` order).

    Args:
        rows: the annotations.
        task: a task name or ``mixed``.
        train: training rules (True) or evaluation rules.
        options: ``data.views``.
        resolve: maps a row to its video path (a :class:`VideoResolver` call); "" when None.
        mix: the ``data.mix`` node when ``task`` is ``mixed``.
    """
    samples = []
    for name in view_tasks(task, mix):
        spec = get_task(name)
        samples += [spec.sample(a, resolve(a) if resolve else "") for a in select(rows, name, train, options)]
    return samples


def view_counts(rows: list[Annotation], train: bool, options: ViewOptions = DEFAULT_VIEWS) -> dict[str, int]:
    """How many samples every registered task keeps from ``rows``."""
    return {task: len(select(rows, task, train, options)) for task in task_names()}


def drop_counts(rows: list[Annotation], task: str, train: bool, options: ViewOptions = DEFAULT_VIEWS) -> Counter:
    """Why rows were left out of ``task``: reason -> count."""
    return Counter(r for r in (drop_reason(task, a, train, options) for a in rows) if r is not None)
