"""Description and rationale: free text, taught by SFT and scored by text overlap (BLEU-4, ROUGE-L)."""

from __future__ import annotations

import re

from vau.data.annotations import Annotation
from vau.registry import TASKS
from vau.tasks.base import Sample, Task
from vau.text_metrics import DescriptionBLEU, DescriptionRougeL

TAG = re.compile(r"</?[a-zA-Z_]+>")


@TASKS.register("describe")
class Describe(Task):
    """Rows with a description; target = description + clean rationale. No answer to be right or wrong (no accuracy
    reward): replies are scored by corpus BLEU-4 and ROUGE-L against that target text (:mod:`vau.text_metrics`)."""

    answer_kind = "text"
    format_tags = ()
    default_rewards = {}
    missing_truth = "no description"
    judged_as = "description"

    def has_truth(self, ann: Annotation) -> bool:
        return bool(ann.description)

    def prompt(self, sample: Sample) -> str:
        return "Describe what happens in the video and explain whether and why it is anomalous."

    def target(self, sample: Sample) -> str:
        return f"{sample.description.strip()}\n{sample.reasoning.strip()}".strip()

    def reference_text(self, sample: Sample) -> str | None:
        return self.target(sample) if (sample.description or "").strip() else None

    def metrics(self, classes=()) -> dict:
        return {"describe_bleu4": DescriptionBLEU(self), "describe_rouge_l": DescriptionRougeL(self)}

    def judged_text(self, reply: str) -> str:
        """The ``<think>`` reasoning when the reply has some, else the whole reply without tags."""
        return super().judged_text(reply) or " ".join(TAG.sub(" ", reply or "").split())
