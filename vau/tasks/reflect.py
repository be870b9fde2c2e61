"""Reflection-aware variants of the scored tasks (SRVAU-R1, arXiv 2602.01004).

A reflect task asks the same question as its base task, but the reply carries an initial reasoning and answer, a
self-reflection that checks the answer against what the video shows, then a revised reasoning and the final answer::

    <think>initial reasoning</think><answer>initial answer</answer>
    <reflect>self-reflection</reflect>
    <think>revised reasoning</think><answer>final answer</answer>

The **last** ``<answer>`` is the final answer everywhere (:func:`vau.parsing.answer_body`): the inherited
``truth``/``parse``/``accuracy`` read it, so rewards, metrics and ``python -m vau score`` score the final answer and
a reply without reflection still scores. :meth:`ReflectMixin.parse_initial` reads the answer given before the
first complete ``<reflect>`` block (None when the reply does not reflect).

Targets (SFT): when the sample carries a reflection chain (``sample.extra["reflection"]``, a :class:`Chain` built by
``python -m vau data reflect`` or by the DataModule's ``data.reflect`` option) the target is that chain; otherwise a
*confirming* chain built from the annotation: the initial answer is the truth and the reflection checks it against
the annotated evidence and keeps it.

A chain reaches a sample through its annotation row: the columns :data:`CHAIN_COLUMNS` of a reflected CSV
(``Annotation.extra``), or the in-memory map ``Annotation.extra[CHAINS_KEY]`` (task -> :class:`Chain`). A reflected
CSV holds one row per (annotation row, reflect task); a reflect task keeps only rows whose ``Chain Task`` is
empty or its own name, so each row is used once per task.

Built-in variants: ``qa_reflect``, ``tag_reflect``, ``cls_reflect``, ``cls_binary_reflect``. A plugin task gets a
reflect variant the same way: ``class MyReflect(ReflectMixin, MyTask)`` with ``base_task = "my_task"``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from vau.data.annotations import ANOMALY_CLASSES, LETTERS, NORMAL, Annotation
from vau.parsing import extract_tag, interval_iou, is_normal_interval, reflect_body, reflects  # noqa: F401  (re-exported)
from vau.registry import TASKS
from vau.tasks.base import DEFAULT_VIEWS, THINK_INSTRUCTION, Sample, ViewOptions
from vau.tasks.cls import AnomalyClassification, BinaryClassification
from vau.tasks.qa import OPTION_CHECK_KEY, TARGET_CHAIN_KEY, TARGET_LETTER_KEY, MultipleChoiceQA, option_check, retell
from vau.tasks.tag import TemporalGrounding

DISTRACTOR_KEY = "distractor"  # Sample.extra key: what a first glance at the clip may take for the event

# a wrong class that is easy to mistake for each class (our choice: same kind of event or scene)
CONFUSABLE = {
    "Abuse": "Assault", "Agriculture": "Food Safety", "Arrest": "Fighting", "Arson": "Fire", "Assault": "Fighting",
    "Explosion": "Fire", "Fighting": "Assault", "Fire": "Explosion", "Food Safety": "Agriculture",
    "Medical Abnormality": "People_falling", "Natural Hazard": "Water_incident", "Object_falling": "People_falling",
    "People_falling": "Object_falling", "Robbery": "Stealing", "Shooting": "Robbery", "Stealing": "Robbery",
    "Traffic_accident": "Object_falling", "Vandalism": "Stealing", "Water_incident": "Natural Hazard",
}
NORMAL_LOOKALIKES = ("Fighting", "Stealing", "Vandalism", "People_falling")  # wrong calls on a normal clip


def _fmt(interval: tuple[float, float]) -> str:
    return f"[{interval[0]:.1f}, {interval[1]:.1f}]"


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if not text or text.endswith((".", "!", "?")) else f"{text}."

CORRECTIVE = "corrective"
CONFIRMING = "confirming"
# The columns `python -m vau data reflect` adds to an annotation CSV (in this order).
CHAIN_COLUMNS = ("Initial Reasoning", "Initial Answer", "Reflection", "Revised Reasoning", "Chain Kind", "Chain Task")
CHAINS_KEY = "vau.reflection_chains"  # Annotation.extra key of in-memory chains (task name -> Chain)
SAMPLE_KEY = "reflection"  # Sample.extra key of the sample's chain
REFLECT_TAGS = ("think", "answer", "reflect", "think", "answer")
REFLECT_INSTRUCTION = (
    "First reason briefly inside <think> </think> and give an initial answer inside <answer> </answer>. "
    "Then reflect inside <reflect> </reflect>: check that answer against what the video shows. "
    "Then give your revised reasoning inside <think> </think> and the final answer inside <answer> </answer>."
)
_KEY_EVIDENCE = re.compile(r"^\W*key evidence\W*:\s*(\S.*)$", re.IGNORECASE | re.MULTILINE)
_FIRST_SENTENCE = re.compile(r".*?(?:[.!?](?=\s|$)|$)", re.DOTALL)


@dataclass(frozen=True)
class Chain:
    """One reflection chain: what the reply teaches before its final answer.

    Attributes:
        initial_reasoning, initial_answer: the first ``<think>`` and ``<answer>`` (answer text in the task's format).
        reflection: the ``<reflect>`` text.
        revised_reasoning: the second ``<think>``; the final answer is always the task's ground truth.
        kind: ``corrective`` (the initial answer is wrong and the reflection corrects it) or ``confirming``.
        task: the reflect task the chain was built for ("" = any).
    """

    initial_reasoning: str
    initial_answer: str
    reflection: str
    revised_reasoning: str
    kind: str = CONFIRMING
    task: str = ""

    def columns(self) -> dict[str, str]:
        """The chain as the cells of :data:`CHAIN_COLUMNS`."""
        values = (self.initial_reasoning, self.initial_answer, self.reflection, self.revised_reasoning, self.kind,
                  self.task)
        return dict(zip(CHAIN_COLUMNS, values))

    @classmethod
    def from_columns(cls, cells: Mapping[str, Any]) -> Chain | None:
        """The chain in a row's extra cells (headers matched ignoring case/spaces); None without one."""
        by_key = {str(k).strip().lower(): "" if v is None else str(v).strip() for k, v in cells.items()}
        values = [by_key.get(c.lower(), "") for c in CHAIN_COLUMNS]
        if not (values[1] and values[2]):  # no initial answer or no reflection: no chain
            return None
        return cls(*values[:4], kind=values[4] or CONFIRMING, task=values[5])


def chain_task(ann: Annotation) -> str:
    """The ``Chain Task`` cell of a reflected CSV row ("" when the row has none)."""
    extra = getattr(ann, "extra", None) or {}
    return next((str(v).strip() for k, v in extra.items() if str(k).strip().lower() == "chain task"), "")


def annotation_chain(ann: Annotation, task: str) -> Chain | None:
    """The chain of ``ann`` for ``task``: an in-memory one first, else the row's chain columns."""
    extra = getattr(ann, "extra", None) or {}
    chains = extra.get(CHAINS_KEY)
    if isinstance(chains, Mapping) and chains.get(task) is not None:
        return chains[task]
    chain = Chain.from_columns({k: v for k, v in extra.items() if k != CHAINS_KEY})
    return chain if chain is not None and chain.task in ("", task) else None


def sample_chain(sample: Sample) -> Chain | None:
    extra = sample.extra if isinstance(sample.extra, dict) else {}
    chain = extra.get(SAMPLE_KEY)
    return chain if isinstance(chain, Chain) else None


class ReflectMixin:
    """What every reflect task adds to its base task (listed first among the bases: ``(ReflectMixin, Base)``).

    Attributes:
        base_task: the registered name of the base task (its metric names are renamed after this task).
    """

    def plausible_mistake(self, sample: Sample, rng: random.Random) -> tuple[str, str, str] | None:
        """A wrong first answer a corrective chain can start from: ``(answer text, reasoning that supports it, the
        sentence that rejects it)``, drawn with ``rng`` (deterministic from the seed), or None when the task has none
        (the template builder then writes a confirming chain). The demo's distractor event, when the sample has one
        (``sample.extra[DISTRACTOR_KEY]``), is the mistake of choice."""
        return None

    base_task: str = ""
    format_tags = REFLECT_TAGS
    default_rewards = {"format": {"weight": 1.0}, "accuracy": {"weight": 1.0}, "self_correction": {"weight": 1.0}}

    # -- rows -------------------------------------------------------------------------------------------------
    def has_truth(self, ann: Annotation) -> bool:
        return chain_task(ann) in ("", self.name) and super().has_truth(ann)

    def drop_reason(self, ann: Annotation, train: bool, options: ViewOptions = DEFAULT_VIEWS) -> str | None:
        other = chain_task(ann)
        if other not in ("", self.name):
            return "reflection chain of another task"
        return super().drop_reason(ann, train, options)

    def sample(self, ann: Annotation, video_path: str = "") -> Sample:
        sample = super().sample(ann, video_path)
        chain = annotation_chain(ann, self.name)
        return sample if chain is None else replace(sample, extra={**sample.extra, SAMPLE_KEY: chain})

    def reorder_options(self, sample: Sample, order: list[int]) -> Sample:
        # A chain's texts name option letters of the original order: such a sample keeps its order.
        return sample if sample_chain(sample) is not None else super().reorder_options(sample, order)

    # -- text -------------------------------------------------------------------------------------------------
    def prompt(self, sample: Sample) -> str:
        prompt = super().prompt(sample)
        if THINK_INSTRUCTION in prompt:
            return prompt.replace(THINK_INSTRUCTION, REFLECT_INSTRUCTION)
        return f"{prompt} {REFLECT_INSTRUCTION}"

    def final_answer_text(self, sample: Sample) -> str:
        """The final answer as the base task's target writes it."""
        return extract_tag(super().target(sample), "answer") or ""

    def rationale(self, sample: Sample) -> str:
        return (sample.reasoning or sample.description).strip() or "The video gives no further detail."

    def evidence(self, sample: Sample) -> str:
        """The annotated evidence a reflection cites: the key object, the description, and the rationale's
        ``Key Evidence:`` line (else its first sentence) -- not the whole rationale, which the revised reasoning
        already holds."""
        parts = []
        if sample.key_object.strip():
            parts.append(f"The key object is {' '.join(sample.key_object.split()).rstrip('.')}.")
        description = " ".join(sample.description.split())
        if description:
            parts.append(description if description.endswith((".", "!", "?")) else f"{description}.")
        reasoning = sample.reasoning.strip()
        key = _KEY_EVIDENCE.search(reasoning)
        cited = key.group(1).strip() if key else _FIRST_SENTENCE.match(" ".join(reasoning.split())).group(0).strip()
        if cited and cited.rstrip(".") not in description:
            parts.append(f"Key evidence: {cited.rstrip('.')}." if key else cited)
        return " ".join(parts)

    def confirming_chain(self, sample: Sample) -> Chain:
        """A chain whose initial answer is the truth and whose reflection checks it against the evidence."""
        answer = self.final_answer_text(sample)
        evidence = self.evidence(sample) or "Nothing in the video contradicts it."
        return Chain(
            initial_reasoning=self.rationale(sample), initial_answer=answer,
            reflection=f"Let me check the answer {answer} against what the video shows. {evidence} "
                       f"This agrees with {answer}, so I keep it.",
            revised_reasoning="The check found nothing that contradicts the first answer, so it stands.",
            kind=CONFIRMING, task=self.name,
        )

    def corrective_chain(self, sample: Sample, mistake: tuple[str, str, str]) -> Chain | None:
        """A chain that starts from ``mistake`` (:meth:`plausible_mistake`'s triple), rejects it with the annotated
        evidence and ends on the truth; None when that first answer is unreadable or would score as right."""
        answer, reasoning, contradiction = mistake
        probe = f"<answer>{answer}</answer><reflect>x</reflect>"
        if self.parse_initial(probe, sample) is None or self.is_correct(self.initial_accuracy(probe, sample)):
            return None
        evidence = self.evidence(sample)
        return Chain(
            initial_reasoning=reasoning, initial_answer=answer,
            reflection=" ".join(p for p in (f"Let me check the answer {answer} against what the video shows.",
                                            evidence, contradiction) if p),
            revised_reasoning=self.rationale(sample), kind=CORRECTIVE, task=self.name,
        )

    def reasoning_before(self, sample: Sample, reasoning: str, answer: str) -> str:
        """A ``<think>`` of the target as written before ``answer`` (a hook: QA appends its option check)."""
        return reasoning

    def target(self, sample: Sample) -> str:
        chain = sample_chain(sample) or self.confirming_chain(sample)
        first, final = chain.initial_answer.strip(), self.final_answer_text(sample)
        initial = self.reasoning_before(sample, chain.initial_reasoning.strip() or self.rationale(sample), first)
        revised = self.reasoning_before(sample, chain.revised_reasoning.strip() or self.rationale(sample), final)
        return (f"<think>{initial}</think>\n<answer>{first}</answer>\n"
                f"<reflect>{chain.reflection.strip()}</reflect>\n"
                f"<think>{revised}</think>\n<answer>{final}</answer>")

    def metrics(self, classes: tuple[str, ...] = ANOMALY_CLASSES) -> dict:
        """The base task's metrics bound to this task (final answer; names renamed after it), plus the initial
        score, the wrong -> right and right -> wrong rates and the share of replies that reflect."""
        out = {}
        for key, metric in super().metrics(classes).items():
            if key.startswith(f"{self.base_task}_"):
                key = f"{self.name}{key[len(self.base_task):]}"
            out[key if key.startswith(self.name) else f"{self.name}_{key}"] = metric
        out.update(self.reflection_metrics())
        return out


@TASKS.register("qa_reflect")
class ReflectQA(ReflectMixin, MultipleChoiceQA):
    """The qa rows, answered with an initial letter, a self-reflection and a final letter (SRVAU-R1)."""

    base_task = "qa"
    default_rewards = {"format": {"weight": 1.0}, "choice_accuracy": {"weight": 1.0},
                       "self_correction": {"weight": 1.0}}

    def plausible_mistake(self, sample: Sample, rng: random.Random) -> tuple[str, str, str] | None:
        truth = self.truth(sample)
        others = [letter for letter, text in zip(LETTERS, sample.options) if letter != truth and text.strip()]
        if not others or truth not in LETTERS:
            return None
        seen = (sample.extra.get(DISTRACTOR_KEY) or {}).get("option")
        return self.mistake_as(sample, seen if seen in others else rng.choice(others))

    def mistake_as(self, sample: Sample, letter: str) -> tuple[str, str, str]:
        """The first glance that takes the clip for option ``letter``, and the sentence that rejects it."""
        truth = self.truth(sample)
        text = _sentence(sample.options[LETTERS.index(letter)]).rstrip(".")
        right = _sentence(sample.options[LETTERS.index(truth)]).rstrip(".")
        return (letter, f"At first glance the clip seems to match option {letter}: {text}.",
                f"This does not fit option {letter}; what the video shows is option {truth}: {right}.")

    def reasoning_before(self, sample: Sample, reasoning: str, answer: str) -> str:
        # data.qa_option_check: each <think> ends by checking every option against the answer that follows it
        if sample.extra.get(OPTION_CHECK_KEY) and answer in LETTERS[: len(sample.options)]:
            return f"{reasoning} {option_check(replace(sample, answer=answer))}"
        return reasoning

    def retold(self, sample: Sample, letter: str) -> Sample:
        """The sample and its chain told as if option ``letter`` were the answer (``data.qa_target_letter:
        random_chain``): the reasoning names that option (:func:`vau.tasks.qa.retell`), a confirming chain confirms
        it, and a corrective chain starts from the same wrong option as before (from the true one when that is the
        drawn letter) and corrects it to ``letter``. A chance-level reflect start that still reads the options."""
        chain = sample_chain(sample)
        told = retell(sample, letter)
        extra = {k: v for k, v in told.extra.items() if k not in (SAMPLE_KEY, TARGET_LETTER_KEY, TARGET_CHAIN_KEY)}
        told = replace(told, extra=extra)
        if chain is not None and chain.kind == CORRECTIVE and chain.initial_answer.strip() in LETTERS:
            first = chain.initial_answer.strip()
            mistake = self.mistake_as(told, sample.answer if first == letter else first)
            corrected = self.corrective_chain(told, mistake)
            if corrected is not None:
                told = replace(told, extra={**extra, SAMPLE_KEY: corrected})
        return told

    def target(self, sample: Sample) -> str:
        letter = str(sample.extra.get(TARGET_LETTER_KEY) or "")
        if sample.extra.get(TARGET_CHAIN_KEY) and letter in LETTERS and letter != sample.answer:
            sample = self.retold(sample, letter)
        return super().target(sample)


@TASKS.register("tag_reflect")
class ReflectGrounding(ReflectMixin, TemporalGrounding):
    """The tag rows, answered with an initial interval, a self-reflection and a final [start, end] (SRVAU-R1)."""

    base_task = "tag"
    default_rewards = {"format": {"weight": 1.0}, "temporal_iou": {"weight": 1.0}, "iou_gain": {"weight": 1.0}}

    def plausible_mistake(self, sample: Sample, rng: random.Random) -> tuple[str, str, str] | None:
        truth = self.truth(sample)
        seen = (sample.extra.get(DISTRACTOR_KEY) or {}).get("interval")
        if seen is not None and interval_iou(seen, truth) < self.correct_threshold:
            wrong = (round(seen[0], 1), round(seen[1], 1))
            fix = ("nothing anomalous happens in the clip, so the answer is [0.0, 0.0]" if is_normal_interval(truth)
                   else f"the anomaly runs from about {truth[0]:.1f} to {truth[1]:.1f} seconds")
            return (_fmt(wrong), f"Something unusual seems to happen from {wrong[0]:.1f} to {wrong[1]:.1f} seconds.",
                    f"What happens at {_fmt(wrong)} is only a brief flash, not the event: {fix}.")
        if is_normal_interval(truth):
            start = round(rng.uniform(0.5, 3.0), 1)
            wrong = (start, round(start + rng.uniform(1.0, 3.0), 1))
            return (_fmt(wrong), f"Something unusual seems to happen from {wrong[0]:.1f} to {wrong[1]:.1f} seconds.",
                    f"Nothing anomalous happens in the clip, so {_fmt(wrong)} is a false alarm; the answer is "
                    f"[0.0, 0.0].")
        start, end = truth
        length = end - start
        candidates = [(end - 0.2 * length, end + 0.8 * length),  # shifted later
                      (start, start + 0.3 * length), (end - 0.3 * length, end)]  # shrunk to one end
        if start >= 0.8 * length:
            candidates.append((start - 0.8 * length, start + 0.2 * length))  # shifted earlier
        rng.shuffle(candidates)
        for a, b in candidates:
            wrong = (round(a, 1), round(b, 1))
            if 0.0 <= wrong[0] < wrong[1] and interval_iou(wrong, truth) < self.correct_threshold:
                return (_fmt(wrong), f"The unusual activity seems to happen from {wrong[0]:.1f} to {wrong[1]:.1f} "
                                     f"seconds.",
                        f"{_fmt(wrong)} does not cover the event: it runs from about {start:.1f} to {end:.1f} "
                        f"seconds.")
        return None


@TASKS.register("cls_reflect")
class ReflectClassification(ReflectMixin, AnomalyClassification):
    """The cls rows, answered with an initial class, a self-reflection and a final class (SRVAU-R1)."""

    base_task = "cls"
    default_rewards = {"format": {"weight": 1.0}, "class_match": {"weight": 1.0}, "self_correction": {"weight": 1.0}}

    def plausible_mistake(self, sample: Sample, rng: random.Random) -> tuple[str, str, str] | None:
        truth = self.truth(sample)
        seen = (sample.extra.get(DISTRACTOR_KEY) or {}).get("class")
        if seen and seen != truth and seen in ANOMALY_CLASSES:
            reject = (f"Nothing anomalous happens, so this is not {seen}; the clip is Normal." if truth == NORMAL
                      else f"That points to {truth} rather than {seen}.")
            return seen, f"The scene looks like {seen.replace('_', ' ').lower()}.", reject
        if truth == NORMAL:
            wrong = rng.choice(NORMAL_LOOKALIKES)
            reject = f"Nothing anomalous happens, so this is not {wrong}; the clip is Normal."
        else:
            wrong = CONFUSABLE.get(truth) or rng.choice([c for c in ANOMALY_CLASSES if c not in (truth, NORMAL)])
            reject = f"That points to {truth} rather than {wrong}."
        return wrong, f"The scene looks like {wrong.replace('_', ' ').lower()}.", reject


@TASKS.register("cls_binary_reflect")
class ReflectBinaryClassification(ReflectMixin, BinaryClassification):
    """The cls_binary rows, answered Anomaly / Normal first, then after a self-reflection (SRVAU-R1)."""

    base_task = "cls_binary"

    def plausible_mistake(self, sample: Sample, rng: random.Random) -> tuple[str, str, str] | None:
        if self.truth(sample):
            return ("Normal", "At first glance nothing in the clip looks out of the ordinary.",
                    "That is an anomaly, so Normal was wrong.")
        return ("Anomaly", "At first glance something in the clip looks unusual.",
                "Nothing here is anomalous, so Anomaly was wrong.")
