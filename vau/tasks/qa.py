"""Multiple-choice QA: which of four options the clip shows."""

from __future__ import annotations

from vau.datamodules.annotations import LETTERS, Annotation
from vau.parsing import parse_choice
from vau.registry import TASKS
from vau.tasks.base import THINK_INSTRUCTION, Sample, Task, think_target


@TASKS.register("qa")
class MultipleChoiceQA(Task):
    """Rows with a question (not -1), four options and a correct letter; the reply is one option letter."""

    answer_kind = "choice"
    missing_truth = "no question (-1)"

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
        return think_target(sample, str(sample.answer))

    def truth(self, sample: Sample) -> str | None:
        return sample.answer

    def parse(self, reply: str, sample: Sample) -> str | None:
        return parse_choice(reply, sample.options)

    def metrics(self, classes=()) -> dict:
        from vau.metrics import AnswerAccuracy

        return {"qa_accuracy": AnswerAccuracy(self)}
