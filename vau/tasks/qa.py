"""Multiple-choice QA: which of four options the clip shows."""

from __future__ import annotations

from dataclasses import replace

from vau.data.annotations import LETTERS, Annotation
from vau.metrics import AnswerAccuracy
from vau.parsing import parse_choice
from vau.qa_position import original_option, shown_options
from vau.registry import TASKS
from vau.tasks.base import THINK_INSTRUCTION, Sample, Task, think_target
from vau.tasks.reporting import position_report

OPTION_CHECK_KEY = "option_check"  # Sample.extra flag: the target's reasoning checks every option (data.qa_option_check)
TARGET_LETTER_KEY = "target_letter"  # Sample.extra: the letter the SFT target answers instead of the true one
# (data.qa_target_letter: random, drawn afresh every epoch; the reasoning and its option check stay true)
TARGET_CHAIN_KEY = "target_chain"  # Sample.extra flag: the whole chain follows the target letter
# (data.qa_target_letter: random_chain): the reasoning names the drawn option and the option check marks it


def option_check(sample: Sample) -> str:
    """Reasoning that checks every option in the order shown, e.g. ``A. A car crashes: no. B. A fire breaks out:
    yes. ...``: each line repeats the option after its letter (a copy) and judges it, and the answer is the letter
    judged yes. SFT with it (``data.qa_option_check: true``) teaches a small model to find the option its reasoning
    supports, which a bare letter after free reasoning leaves to one hard lookup (docs/data.md "Option order").

    Example:
        >>> print(option_check(Sample(task="qa", video="v.mp4", options=("x", "y"), answer="B")))
        A. x: no. B. y: yes.
    """
    return " ".join(f"{letter}. {text}: {'yes' if letter == sample.answer else 'no'}."
                    for letter, text in zip(LETTERS, sample.options))


def quotes_answer(sample: Sample) -> bool:
    """Whether the sample's reasoning quotes its answer option's text (case-insensitively): what
    ``data.qa_target_letter: random_chain`` rewrites."""
    index = LETTERS.index(sample.answer) if sample.answer in LETTERS else -1
    return 0 <= index < len(sample.options) and sample.options[index].strip().lower() in (
        sample.reasoning or "").lower()


def retell(sample: Sample, letter: str) -> Sample:
    """The sample told as if option ``letter`` were its answer: the reasoning names that option's text where it named
    the true one, and the answer is ``letter`` (so the option check marks it). The description is kept: what the clip
    shows stays true, only the conclusion drawn from it is wrong. A chance-level SFT start that still reads the options
    (``data.qa_target_letter: random_chain``; docs/experiments.md).

    Example:
        >>> s = Sample(task="qa", video="v.mp4", options=("A fire breaks out", "A car crashes"), answer="A",
        ...            reasoning="A red square appears, so a fire breaks out.")
        >>> retell(s, "B").reasoning
        'A red square appears, so a car crashes.'
    """
    true_text = sample.options[LETTERS.index(sample.answer)].strip()
    new_text = sample.options[LETTERS.index(letter)].strip()
    reasoning = sample.reasoning or ""
    at = reasoning.lower().find(true_text.lower())
    if at >= 0:
        if reasoning[at].islower():
            new_text = new_text[:1].lower() + new_text[1:]
        reasoning = reasoning[:at] + new_text + reasoning[at + len(true_text):]
    return replace(sample, reasoning=reasoning, answer=letter)


@TASKS.register("qa")
class MultipleChoiceQA(Task):
    """Rows with a question (not -1), four options and a correct letter; the reply is one option letter."""

    answer_kind = "choice"
    missing_truth = "no question (-1)"
    asks_options = True
    answer_format = "the letter of the correct option"

    def has_truth(self, ann: Annotation) -> bool:
        return ann.has_question

    def prompt(self, sample: Sample) -> str:
        options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, sample.options))
        return (
            "Watch the video and answer the multiple-choice question.\n"
            f"Question: {sample.question}\nOptions:\n{options}\n"
            f"{THINK_INSTRUCTION} The answer is one option letter."
        )

    def target(self, sample: Sample) -> str:
        letter = str(sample.extra.get(TARGET_LETTER_KEY) or sample.answer)
        if sample.extra.get(TARGET_CHAIN_KEY) and letter != sample.answer:
            sample = retell(sample, letter)
        if sample.extra.get(OPTION_CHECK_KEY):
            reasoning = f"{(sample.reasoning or sample.description).strip()} {option_check(sample)}"
            return think_target(replace(sample, reasoning=reasoning), letter)
        return think_target(sample, letter)

    def truth(self, sample: Sample) -> str | None:
        return sample.answer

    def parse(self, reply: str, sample: Sample) -> str | None:
        return parse_choice(reply, sample.options)

    def display(self, value, sample: Sample) -> str | None:
        """``B. A fire breaks out``: the letter and the option text it stands for."""
        if value is None:
            return None
        index = "ABCD".find(str(value))
        text = sample.options[index] if 0 <= index < len(sample.options) else ""
        return f"{value}. {text}" if text else str(value)

    def report_sections(self, rows, completions, replies, classes) -> dict:
        return {"qa_position": position_report(self, rows, replies)}

    def answer_categories(self, sample: Sample) -> tuple[str, ...]:
        return tuple(LETTERS[: len(sample.options)])

    def reorder_options(self, sample: Sample, order: list[int]) -> Sample:
        return reorder_options(sample, order)

    def metrics(self, classes=()) -> dict:
        return {"qa_accuracy": AnswerAccuracy(self)}


def shift_options(sample: Sample, shift: int) -> Sample:
    """``sample`` asked with its options cyclically shifted: the option shown with letter i is original option
    (i + shift) mod n, and the answer letter moves with its option (docs/scoring.md, circular accuracy).

    Example:
        >>> s = Sample(task="qa", video="v.mp4", options=("a", "b", "c", "d"), answer="B")
        >>> t = shift_options(s, 1)
        >>> t.options, t.answer, t.extra["shift"]
        (('b', 'c', 'd', 'a'), 'A', 1)
    """
    n = len(sample.options)
    if not n:
        raise ValueError(f"{sample.video}: a question without options cannot be shifted")
    shift = int(shift) % n
    answer = sample.answer
    if answer in LETTERS[:n]:
        answer = next(LETTERS[i] for i in range(n) if original_option(i, shift, n) == LETTERS.index(answer))
    return replace(sample, options=tuple(shown_options(sample.options, shift)), answer=answer,
                   extra={**sample.extra, "shift": shift})


def reorder_options(sample: Sample, order: list[int]) -> Sample:
    """``sample`` with option i showing original option ``order[i]``; the answer letter moves with its option.

    Example:
        >>> s = Sample(task="qa", video="v.mp4", options=("a", "b", "c", "d"), answer="B")
        >>> t = reorder_options(s, [3, 1, 0, 2])
        >>> t.options, t.answer
        (('d', 'b', 'a', 'c'), 'B')
        >>> reorder_options(s, [1, 0, 2, 3]).answer
        'A'
    """
    n = len(sample.options)
    if sorted(order) != list(range(n)):
        raise ValueError(f"{sample.video}: {order} is not an order of {n} options")
    answer = sample.answer
    if answer in LETTERS[:n]:
        answer = LETTERS[order.index(LETTERS.index(answer))]
    return replace(sample, options=tuple(sample.options[i] for i in order), answer=answer)
