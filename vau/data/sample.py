"""A :class:`Sample`: one annotation row seen through one task, and the ``data.views`` switches.

Both live in the data layer so that everything above it (parsing, metrics, tasks, rewards, data modules) can name
them without importing the tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from vau.data.annotations import NORMAL, Annotation


@dataclass(frozen=True)
class Sample:
    """One training/eval example: an annotation row seen through one task.

    Rewards and metrics read the ground truth through the task (``get_task(sample.task).truth(sample)``).
    """

    task: str
    video: str
    video_path: str = ""
    source: str = ""
    question: str | None = None
    options: tuple[str, ...] = ()
    answer: str | None = None
    interval: tuple[float, float] | None = None
    anomaly_class: str = ""
    description: str = ""
    reasoning: str = ""
    key_object: str = ""
    row: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_normal(self) -> bool:
        return self.anomaly_class == NORMAL

    @classmethod
    def from_annotation(cls, task: str, ann: Annotation, video_path: str = "") -> Sample:
        return cls(
            task=task, video=ann.video, video_path=video_path, source=ann.source, question=ann.question,
            options=ann.options, answer=ann.answer, interval=ann.interval, anomaly_class=ann.anomaly_class,
            description=ann.description, reasoning=ann.reasoning, key_object=ann.key_object, row=ann.row,
        )


@dataclass(frozen=True)
class ViewOptions:
    """The ``data.views`` config node: the switches of the task views (docs/data.md "Task views").

    Attributes:
        tag_train_normal: TAG training also keeps normal clips (target [0.0, 0.0]).
        tag_eval_normal: TAG evaluation also keeps normal clips (false-alarm rate; counts then differ from the paper).
    """

    tag_train_normal: bool = True
    tag_eval_normal: bool = False

    @classmethod
    def from_cfg(cls, cfg: Mapping | None) -> ViewOptions:
        values = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} under data.views; known keys: {sorted(known)}")
        return cls(**{k: bool(v) for k, v in values.items()})


DEFAULT_VIEWS = ViewOptions()
