"""What every task is: a :class:`Sample` type, the :class:`Task` interface and the ``data.views`` switches.

A task owns everything that depends on *which question is asked of a clip*: which annotation rows it keeps (for
training and for evaluation, and why it leaves the others out), its prompt, its target text, its ground truth, how
a reply is parsed into a prediction, its default rewards and its metrics. Views, rewards, metrics, ``score`` and the
run ask the task; nothing outside ``vau/tasks/`` compares task names.

A new task is one file with a registered subclass::

    from vau.registry import TASKS
    from vau.tasks import Task

    @TASKS.register("count_people")
    class CountPeople(Task):
        "How many people the clip shows; answer a number."
        ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from vau.data.annotations import ANOMALY_CLASSES, Annotation
from vau.data.sample import DEFAULT_VIEWS, Sample, ViewOptions
from vau.parsing import LOOK_END, cut_after, extract_tag, has_strict_format, reflect_body
from vau.reflect_metrics import InitialScore, ReflectRate, RightToWrong, WrongToRight

THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.IGNORECASE | re.DOTALL)
THINK_INSTRUCTION = "First reason briefly inside <think> </think>, then give the final answer inside <answer> </answer>."
# Two-pass self-correction (``generation.self_correct``): the second user turn, and what stands between the two replies
# in the joined reply (a ``<reflect>`` block, so the first answer reads as the initial one everywhere).
SECOND_PASS_PROMPT = ("Check your answer against what the video shows. If it is wrong, correct it. "
                      "Answer again in the same format.")
SECOND_PASS_NOTE = "second pass: asked to check the first answer against the video"


def join_turns(turns: Sequence[str]) -> str:
    """One reply from the turns of a reply that looked again (:mod:`vau.rollout.look`): its first ``<answer>`` is
    the initial answer, its last the final one, as in a reflect reply.

    Example:
        >>> join_turns(["<answer>A</answer><look>[1, 2]</look> ", "<reflect>r</reflect><answer>B</answer>"])
        '<answer>A</answer><look>[1, 2]</look>\\n<reflect>r</reflect><answer>B</answer>'
    """
    return "\n".join(part.strip() for part in turns)


def join_passes(first: str, second: str) -> str:
    """One reply from the two replies of two-pass self-correction: the first, a ``<reflect>`` block, the second.

    Every reader of replies then sees the first reply's answer as the initial answer (:meth:`Task.parse_initial`)
    and the second's as the final one (the last ``<answer>``), so the reflection metrics, the rewards and
    ``python -m vau score`` measure what the second pass changed, for any task.

    Example:
        >>> print(join_passes("<answer>A</answer>", "<answer>B</answer>"))
        <answer>A</answer>
        <reflect>second pass: asked to check the first answer against the video</reflect>
        <answer>B</answer>
    """
    return f"{first.strip()}\n<reflect>{SECOND_PASS_NOTE}</reflect>\n{second.strip()}"


def split_passes(reply: str) -> tuple[str, str] | None:
    """The two replies of a :func:`join_passes` reply, or None when ``reply`` is not one."""
    sep = f"\n<reflect>{SECOND_PASS_NOTE}</reflect>\n"
    if not isinstance(reply, str) or sep not in reply:
        return None
    first, second = reply.rsplit(sep, 1)
    return first, second



# A second look (``generation.look_again``): the first prompt offers it, the follow-up turn shows the window's frames.
LOOK_INSTRUCTION = ("If a moment of the video needs a closer look, write <look>[start, end]</look> with its start "
                    "and end in seconds after your answer, and it will be shown to you again.")
LOOK_TURN = ("Frames from {start:g} to {end:g} seconds of the video, seen again. Reflect on your first answer inside "
             "<reflect> </reflect>, then reason inside <think> </think> and give the final answer inside "
             "<answer> </answer>.")


#: ``Sample.extra`` key of a look chain for SFT: ``{"window": [start, end], "first": the reply up to its </look>,
#: "final": the reply after the look}`` (the first reply and the window are trained on as well as the final one).
LOOK_CHAIN_KEY = "vau.look_chain"


#: ``Sample.extra`` key of the seconds a clip's class-agnostic cue shows (``data.generate.cue_seconds``): where a
#: model that missed the anomaly should look again.
LOOK_CUE_KEY = "vau.look_cue"


def look_chain(target: str, sample: Sample, window: tuple[float, float], guess: str) -> dict[str, Any]:
    """A look chain (:data:`LOOK_CHAIN_KEY`) for a clip whose frames missed its anomaly: a first reply that says
    so, answers ``guess`` and asks for ``window``; then a reflection on what the window shows and ``target``, the
    task's own reply.

    Example:
        >>> s = Sample("qa", "v.mp4", description="A red square appears.")
        >>> look_chain("<answer>B</answer>", s, (4.0, 12.5), "C")["first"]
        '<think>A grey border shows from 4 to 12.5 seconds; the frames do not show what happens there.</think><answer>C</answer><look>[4, 12.5]</look>'
    """
    start, end = round(float(window[0]), 1), round(float(window[1]), 1)
    first = (f"<think>A grey border shows from {start:g} to {end:g} seconds; the frames do not show what happens "
             f"there.</think><answer>{guess}</answer><look>[{start:g}, {end:g}]</look>")
    final = f"<reflect>The frames from {start:g} to {end:g} seconds show it: {sample.description.strip()}</reflect>{target}"
    return {"window": [start, end], "first": first, "final": final}


def look_turn(window: tuple[float, float]) -> str:
    """The user turn that shows the frames of ``window`` (seconds) again.

    Example:
        >>> look_turn((12.0, 15.5))[:39]
        'Frames from 12 to 15.5 seconds of the v'
    """
    return LOOK_TURN.format(start=round(float(window[0]), 2), end=round(float(window[1]), 2))


def think_target(sample: Sample, answer: str) -> str:
    """``<think>rationale</think>`` (the description when there is no rationale) then ``<answer>answer</answer>``."""
    return f"<think>{(sample.reasoning or sample.description).strip()}</think>\n<answer>{answer}</answer>"


class Task:
    """One task of VAU-Bench (or of a plugin): rows, prompt, target, ground truth, parsing, rewards and metrics.

    Subclasses override :meth:`has_truth`, :meth:`prompt`, :meth:`target`, :meth:`truth` and :meth:`parse`, and
    where they differ the class attributes below. The registry name becomes :attr:`name`.

    Attributes:
        answer_kind: what a reply answers with: ``choice`` (an option letter), ``interval`` ([start, end] seconds),
            ``class`` (an anomaly class name), ``binary`` (anomalous or normal) or ``text`` (free text, not scored).
            Rewards that read one kind of answer (``choice_accuracy``, ``temporal_iou``, ``class_match``) apply to
            every task of that kind, plugin tasks included.
        format_tags: the tags a well-formed reply contains, in order (format rewards and the format rate).
        default_rewards: the reward config a GRPO run of this task starts from (``reward=task`` in config).
        missing_truth: why a row without this task's ground truth is left out (``data stats``, the run log).
        correct_threshold: an answer whose score (:meth:`accuracy`) reaches it counts as right for the
            wrong -> right / right -> wrong rates and the ``self_correction`` reward (1 = exact; TAG: IoU 0.5).
        score_name: the name of the task's main score in metric names (``accuracy``; TAG: ``miou``).
        asks_options: the prompt lists lettered options (QA): evaluation can ask it under option shifts (circular
            accuracy), ``choice_accuracy`` rewards it, ``predict videos=DIR`` needs ``questions=FILE`` for it.
        judged_as: what ``python -m vau judge`` calls the text it scores of a reply.
        answer_format: the answer's form in words, for a teacher model writing reflections (``builder=teacher``).
    """

    answer_kind: str = "text"
    format_tags: tuple[str, ...] = ("think", "answer")
    default_rewards: Mapping[str, Mapping[str, Any]] = {"format": {"weight": 1.0}, "accuracy": {"weight": 1.0}}
    missing_truth: str = "no ground truth for this task"
    correct_threshold: float = 1.0
    score_name: str = "accuracy"
    asks_options: bool = False
    judged_as: str = "reasoning"
    answer_format: str = "the answer"

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def doc(self) -> str:
        """Which rows the task keeps and why (the class docstring)."""
        return (type(self).__doc__ or "").strip()

    @property
    def scored(self) -> bool:
        """Whether replies have an answer to be scored right or wrong (``text`` tasks have none; their description
        metrics make them :attr:`reported`)."""
        return self.answer_kind != "text"

    @property
    def reported(self) -> bool:
        """Whether ``score`` and evaluation report this task: every scored task, and a text task whose replies have
        metrics (``describe``: BLEU-4 and ROUGE-L against :meth:`reference_text`)."""
        return self.scored or bool(self.metrics())

    def owns(self, sample: Sample) -> bool:
        """Whether ``sample`` was made by this task."""
        return sample.task == self.name

    # -- rows ---------------------------------------------------------------------------------------------------
    def has_truth(self, ann: Annotation) -> bool:
        """Whether ``ann`` holds this task's ground truth: the rows ``python -m vau score`` scores."""
        raise NotImplementedError

    def drop_reason(self, ann: Annotation, train: bool, options: ViewOptions = DEFAULT_VIEWS) -> str | None:
        """Why this task's view leaves ``ann`` out of training (``train=True``) or evaluation; None when it keeps it."""
        return None if self.has_truth(ann) else self.missing_truth

    def keeps(self, ann: Annotation, train: bool = False, options: ViewOptions = DEFAULT_VIEWS) -> bool:
        """Whether this task's view uses ``ann`` for training (``train=True``) or for evaluation."""
        return self.drop_reason(ann, train, options) is None

    def sample(self, ann: Annotation, video_path: str = "") -> Sample:
        return Sample.from_annotation(self.name, ann, video_path)

    # -- text ---------------------------------------------------------------------------------------------------
    def prompt(self, sample: Sample) -> str:
        raise NotImplementedError

    def target(self, sample: Sample) -> str:
        """The reply SFT teaches for ``sample``."""
        raise NotImplementedError

    # -- answers ------------------------------------------------------------------------------------------------
    def truth(self, sample: Sample) -> Any | None:
        """The ground-truth answer of ``sample`` in the form :meth:`parse` returns, or None when it has none."""
        return None

    def parse(self, reply: str, sample: Sample) -> Any | None:
        """The prediction a reply commits to (None when absent or ambiguous); never raises on any text."""
        return None

    def accuracy(self, reply: str, sample: Sample) -> float | None:
        """Score of one reply in [0, 1] against the truth (1/0, or IoU for intervals); None without a truth."""
        truth = self.truth(sample)
        if truth is None:
            return None
        return float(self.parse(reply, sample) == truth)

    def class_score(self, reply: str, sample: Sample, binary: bool = False) -> float | None:
        """Score of the reply's anomaly-class call (the ``class_match`` reward): None for a task that makes no such
        call (this default) or a sample without a known class; ``binary`` scores only anomalous vs normal."""
        return None

    # -- initial answers (a reply that reflects, or a two-pass reply) ----------------------------------------------
    def initial_reply(self, reply: str) -> str | None:
        """``<answer>initial answer</answer>``: the answer given before the reply's first complete ``<reflect>``
        block, or None when the reply does not reflect (then it has no separate initial answer).

        Reflect tasks (:mod:`vau.tasks.reflect`) ask for such replies; two-pass self-correction
        (``generation.self_correct``, :func:`join_passes`) writes them for any task.
        """
        before = reflect_body(reply)
        body = extract_tag(before, "answer") if before is not None else None
        return None if body is None else f"<answer>{body}</answer>"

    def reorder_options(self, sample: Sample, order: list[int]) -> Sample:
        """``sample`` asked with its options in ``order`` (option i shown is original option ``order[i]``), its
        answer moved with its option; unchanged for tasks without options. Training with
        ``data.train_option_order: shuffled`` asks each question in a fresh order every epoch."""
        return sample

    def answer_categories(self, sample: Sample) -> tuple[str, ...]:
        """The finite set of answers ``sample`` can get (QA: its option letters), or () for open answers: GRPO logs
        the share of first answers in each (``train/initial_answer_share/<answer>``), where a policy that learned to
        open with a wrong answer on purpose shows without reading replies."""
        return ()

    def parse_initial(self, reply: str, sample: Sample) -> Any | None:
        """The answer given before the reflection, parsed like the final one; None when the reply does not reflect."""
        initial = self.initial_reply(reply)
        return None if initial is None else self.parse(initial, sample)

    def initial_accuracy(self, reply: str, sample: Sample) -> float | None:
        """:meth:`accuracy` of the initial answer; None without a truth or without a reflection."""
        if self.truth(sample) is None:
            return None
        initial = self.initial_reply(reply)
        return None if initial is None else self.accuracy(initial, sample)

    def is_correct(self, score: float | None) -> bool:
        """Whether an answer of this score counts as right (:attr:`correct_threshold`)."""
        return score is not None and score >= self.correct_threshold

    def reflection_metrics(self) -> dict:
        """What a reflection did to the answers, keyed by log name: the initial score, Δ(i→c), Δ(c→i) and the share
        of replies that reflect (:mod:`vau.reflect_metrics`). Reflect tasks report them always; other tasks when
        their replies are two-pass (``generation.self_correct``)."""
        return {f"{self.name}_initial_{self.score_name}": InitialScore(self, anomalous_only=self.answer_kind == "interval"),
                f"{self.name}_delta_i2c": WrongToRight(self), f"{self.name}_delta_c2i": RightToWrong(self),
                f"{self.name}_reflect_rate": ReflectRate(self)}

    def follows_format(self, reply: str) -> bool:
        """Whether ``reply`` is in this task's format (the ``format`` reward and the format rate): by default exactly
        :attr:`format_tags` in order, each once, with non-blank content; a two-pass reply (:func:`join_passes`)
        when both of its replies are; a reply that looked again when its first turn is that format plus
        ``<look>`` and what follows the look is ``<reflect>`` plus that format."""
        passes = split_passes(reply)
        if passes is not None:
            return all(has_strict_format(part, tuple(self.format_tags)) for part in passes)
        tags = tuple(self.format_tags)
        if tags and isinstance(reply, str) and LOOK_END in reply:  # looked again: this format + <look>, then
            first = cut_after(reply)                                 # <reflect> and this format after the look
            rest = reply[len(first):].strip()
            return has_strict_format(first, (*tags, "look")) and (not rest or has_strict_format(rest, ("reflect", *tags)))
        return has_strict_format(reply, tags)

    def metrics(self, classes: tuple[str, ...] = ANOMALY_CLASSES) -> dict:
        """The torchmetrics reported for this task in validation/test and by ``score``, keyed by log name.

        The format rate is added by :func:`vau.metrics.task_metrics` for every task.
        """
        return {}

    def per_class_metric(self, classes: tuple[str, ...] = ANOMALY_CLASSES):
        """A metric whose ``compute`` is a vector over ``classes`` (reported per class by ``score``), or None."""
        return None

    def report_metrics(self) -> dict:
        """Metrics ``score``'s report adds to :meth:`metrics`, keyed by log name (none by default)."""
        return {}

    def report_sections(self, rows: list[Sample], completions: list[str], replies: Mapping,
                        classes: tuple[str, ...]) -> dict:
        """The report sections this task contributes besides its metrics, keyed ``qa_position``, ``confusion`` or
        ``iou_histogram`` (:mod:`vau.tasks.reporting`); ``replies`` maps (task, video, shift) to a record."""
        return {}

    def display(self, value: Any, sample: Sample) -> str | None:
        """A parsed answer or truth as the report's clip list shows it."""
        return None if value is None else str(value)

    def answer_interval(self, value: Any) -> list[float] | None:
        """A parsed answer or truth as ``[start, end]`` seconds for the report's timeline; None when the task does
        not answer with an interval."""
        return None

    def interval_truth(self, sample: Sample) -> tuple[float, float] | None:
        """The truth as an interval, read by the interval rewards (``temporal_iou``, ``iou_gain``); None when the task
        does not answer with an interval."""
        return None

    def reference_text(self, sample: Sample) -> str | None:
        """The text a free-text reply is compared with by the description metrics (:mod:`vau.text_metrics`); None
        for tasks that answer otherwise (this default) and rows without one."""
        return None

    def judged_text(self, reply: str) -> str:
        """The text ``python -m vau judge`` scores: the ``<think>`` reasoning; "" when there is none."""
        return "\n".join(t.strip() for t in THINK_BLOCK.findall(reply or "") if t.strip())

    def rows_to_score(self, kept: list[Annotation], predicted: set[str]) -> tuple[list[Annotation], int]:
        """The rows ``score`` counts given the videos that have a prediction of this task, and how many were left
        out; by default every row with a truth."""
        return kept, 0

    def corpus(self, sample: Sample) -> list[str]:
        """Texts of this task for the tiny test tokenizer (its prompt and target on a placeholder sample)."""
        return [self.prompt(sample), self.target(sample)]
