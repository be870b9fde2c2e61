"""Task specs: which annotation rows a task keeps, its prompt, its target text and its answer parser.

One annotation row can yield several samples, one per task: ``qa`` (multiple choice), ``tag`` (temporal
anomaly grounding), ``cls`` (anomaly classification) and ``describe`` (description + rationale).

Example:
    >>> spec = TASKS["qa"]
    >>> sample = spec.sample(annotation)          # doctest: +SKIP
    >>> spec.prompt(sample), spec.target(sample)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from vau.datamodules.annotations import LETTERS, Annotation

# The 19 anomaly classes of VAU-Bench plus Normal (the 20-way classification label set).
ANOMALY_CLASSES = (
    "Abuse", "Arrest", "Arson", "Assault", "Burglary", "Explosion", "Fighting", "Object Falling", "People Falling",
    "Road Accidents", "Robbery", "Shooting", "Shoplifting", "Stealing", "Traffic Accident", "Vandalism",
    "Water Incident", "Fire", "Other Anomaly", "Normal",
)


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
        return self.anomaly_class == "Normal"

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


def _describe_target(s: Sample) -> str:
    return f"{s.description.strip()}\n{s.reasoning.strip()}".strip()


@dataclass(frozen=True)
class TaskSpec:
    """How one task turns an annotation into a prompt and a target, and which rows it keeps.

    Attributes:
        keep: the rows this task can use (a row without a question has no QA sample, and so on).
        format_tags: the tags a well-formed reply contains, in order (for format rewards and the format rate).
    """

    name: str
    keep: Callable[[Annotation], bool]
    prompt: Callable[[Sample], str]
    target: Callable[[Sample], str]
    format_tags: tuple[str, ...] = ("think", "answer")
    doc: str = ""

    def sample(self, ann: Annotation, video_path: str = "") -> Sample:
        return Sample.from_annotation(self.name, ann, video_path)


TASKS: dict[str, TaskSpec] = {
    "qa": TaskSpec(
        "qa", lambda a: a.has_question, _qa_prompt, _qa_target,
        doc="rows with a question, four options and a correct letter",
    ),
    "tag": TaskSpec(
        "tag", lambda a: a.interval is not None, _tag_prompt, _tag_target,
        doc="rows whose interval is known (normal clips included, as [0, 0])",
    ),
    "cls": TaskSpec(
        "cls", lambda a: bool(a.anomaly_class), _cls_prompt, _cls_target,
        doc="rows with an anomaly class",
    ),
    "describe": TaskSpec(
        "describe", lambda a: bool(a.description), _describe_prompt, _describe_target, format_tags=(),
        doc="rows with a description (SFT only)",
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
