"""Task specs: which annotation rows a task keeps, its prompt, its target text and its answer parser.

One annotation row can yield several samples, one per task (a *view* of the annotations):

- ``qa``: rows with a question (not ``-1``), four options and a correct letter; target: the option letter.
- ``tag``: evaluation keeps anomalous clips with a known interval of positive length (the paper protocol:
  MSAD test 120); training also keeps normal clips, target ``[0.0, 0.0]`` (``data.views.tag_train_normal``);
  target: ``[start, end]`` in seconds.
- ``cls``: rows whose class is one of the 20 labels of :data:`ANOMALY_CLASSES`; target: the class (20-way).
- ``cls_binary``: the ``cls`` rows; target: ``Anomaly`` or ``Normal``.
- ``describe``: rows with a Description (SFT only: there is no answer to score); target: description + rationale.

Why TAG differs between training and evaluation: an IoU is undefined for a clip without an anomaly, so the
benchmark scores anomalous clips only (VAU-R1's evaluation skips normal clips); in training, normal clips teach
the ``[0.0, 0.0]`` answer the prompt asks for. Rows with an unknown interval (``-1``) have no TAG target at all.
``TaskSpec.keep`` is the set with a ground truth (for TAG: known interval, normal clips included), which
``python -m vau score`` splits into IoU over the anomalous clips (the paper's 120) and false alarms over the
normal ones; ``TaskSpec.keeps(row, train)`` is the view's rule.
``vau.datamodules.views`` applies these rules (and the multi-task ``mixed`` view) for the DataModule and
``python -m vau data stats``.

Example:
    >>> spec = TASKS["qa"]
    >>> sample = spec.sample(annotation)          # doctest: +SKIP
    >>> spec.prompt(sample), spec.target(sample)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from vau.datamodules.annotations import ANOMALY_CLASSES, LETTERS, NORMAL, Annotation

__all__ = ["ANOMALY_CLASSES", "TASKS", "Sample", "TaskSpec", "get_task", "tokenizer_corpus"]


@dataclass(frozen=True)
class Sample:
    """One training/eval example: an annotation row seen through one task.

    Rewards and metrics read the ground truth from here (``answer``, ``interval``, ``anomaly_class``).
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

    def with_path(self, video_path: str) -> Sample:
        return replace(self, video_path=video_path)


THINK_INSTRUCTION = "First reason briefly inside <think> </think>, then give the final answer inside <answer> </answer>."


def _qa_prompt(s: Sample) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, s.options))
    return (
        "Watch the video and answer the multiple-choice question.\n"
        f"Question: {s.question}\nOptions:\n{options}\n"
        f"{THINK_INSTRUCTION} The answer is one option letter."
    )


def _tag_prompt(s: Sample) -> str:
    return (
        "Does an anomaly happen in this video, and when? "
        f"{THINK_INSTRUCTION} Answer with the start and end time in seconds as [start, end], "
        "or [0.0, 0.0] if the video is normal."
    )


def _cls_prompt(s: Sample) -> str:
    return (
        "Which anomaly class does this video show? Choose one of: " + ", ".join(ANOMALY_CLASSES) + ". "
        f"{THINK_INSTRUCTION} Answer with the class name only."
    )


def _binary_prompt(s: Sample) -> str:
    return f"Is there an anomaly in this video? {THINK_INSTRUCTION} Answer with Anomaly or Normal."


def _describe_prompt(s: Sample) -> str:
    return "Describe what happens in the video and explain whether and why it is anomalous."


def _think(reasoning: str, fallback: str) -> str:
    return f"<think>{(reasoning or fallback).strip()}</think>\n"


def _qa_target(s: Sample) -> str:
    return _think(s.reasoning, s.description) + f"<answer>{s.answer}</answer>"


def _tag_target(s: Sample) -> str:
    start, end = s.interval if s.interval is not None else (0.0, 0.0)
    return _think(s.reasoning, s.description) + f"<answer>[{start:.1f}, {end:.1f}]</answer>"


def _cls_target(s: Sample) -> str:
    return _think(s.reasoning, s.description) + f"<answer>{s.anomaly_class}</answer>"


def _binary_target(s: Sample) -> str:
    return _think(s.reasoning, s.description) + f"<answer>{'Normal' if s.is_normal else 'Anomaly'}</answer>"


def _describe_target(s: Sample) -> str:
    return f"{s.description.strip()}\n{s.reasoning.strip()}".strip()


@dataclass(frozen=True)
class TaskSpec:
    """How one task turns an annotation into a prompt and a target, and which rows it keeps.

    Attributes:
        keep: the rows with a ground truth for this task (a row without a question has no QA sample, and so
            on); ``python -m vau score`` scores these (for TAG: IoU on the anomalous ones, false alarms on the
            normal ones).
        keep_train: the rows it trains on, when different from ``keep`` (see the module doc for why).
        keep_eval: the rows the benchmark evaluates on, when different from ``keep`` (TAG: the paper's count).
        format_tags: the tags a well-formed reply contains, in order (for format rewards and the format rate).
        doc: which rows the task keeps and why.
    """

    name: str
    keep: Callable[[Annotation], bool]
    prompt: Callable[[Sample], str]
    target: Callable[[Sample], str]
    format_tags: tuple[str, ...] = ("think", "answer")
    doc: str = ""
    keep_train: Callable[[Annotation], bool] | None = None
    keep_eval: Callable[[Annotation], bool] | None = None

    def keeps(self, ann: Annotation, train: bool = False) -> bool:
        """Whether this task's view uses ``ann`` for training (``train=True``) or for evaluation."""
        rule = self.keep_train if train else self.keep_eval
        return bool((rule or self.keep)(ann))

    def sample(self, ann: Annotation, video_path: str = "") -> Sample:
        return Sample.from_annotation(self.name, ann, video_path)


TASKS: dict[str, TaskSpec] = {
    "qa": TaskSpec(
        "qa", lambda a: a.has_question, _qa_prompt, _qa_target,
        doc="rows with a question (not -1), four options and a correct letter",
    ),
    "tag": TaskSpec(
        "tag", lambda a: a.interval is not None, _tag_prompt, _tag_target,
        doc="evaluation: anomalous clips with a known interval (paper protocol; IoU is undefined on normal clips); "
            "training: those plus normal clips, target [0.0, 0.0]; rows with an unknown interval (-1): never",
        keep_train=lambda a: a.has_anomaly_interval or a.is_normal,
        keep_eval=lambda a: a.has_anomaly_interval,
    ),
    "cls": TaskSpec(
        "cls", lambda a: a.known_class, _cls_prompt, _cls_target,
        doc="rows whose class is one of the 20 labels (19 anomaly types + Normal); 20-way",
    ),
    "cls_binary": TaskSpec(
        "cls_binary", lambda a: a.known_class, _binary_prompt, _binary_target,
        doc="the cls rows, answered Anomaly / Normal",
    ),
    "describe": TaskSpec(
        "describe", lambda a: bool(a.description), _describe_prompt, _describe_target, format_tags=(),
        doc="rows with a description; target = description + clean rationale (SFT only)",
    ),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} (config key data.task)") from None


def tokenizer_corpus() -> list[str]:
    """Text the tiny test tokenizer is trained on: every template with placeholder content, class names, digits."""
    demo = Sample(
        task="qa", video="x.mp4", question="What happens in the video?",
        options=("Nothing unusual happens", "A fire breaks out", "A fight starts", "Someone steals a bag"),
        answer="B", interval=(2.5, 7.0), anomaly_class="Fire", description="A red object appears.",
        reasoning="A red object appears from 2.5 to 7.0 seconds.",
    )
    lines = []
    for spec in TASKS.values():
        lines += [spec.prompt(demo), spec.target(demo)]
    lines += list(ANOMALY_CLASSES) + [" ".join(ANOMALY_CLASSES).lower()]
    lines += [f"[{a}.{b}, {a + 1}.{b}]" for a in range(60) for b in range(10)]
    lines += ["system", "user", "assistant", "The answer is", "Option", "seconds", "normal", "anomaly"]
    from vau.datamodules.synthetic import corpus as synthetic_corpus

    return lines + synthetic_corpus()
