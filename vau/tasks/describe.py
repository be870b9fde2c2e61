"""Description and rationale: free text, taught by SFT (there is no answer to score)."""

from __future__ import annotations

import re

from vau.data.annotations import Annotation
from vau.registry import TASKS
from vau.tasks.base import Sample, Task

TAG = re.compile(r"</?[a-zA-Z_]+>")


@TASKS.register("describe")
class Describe(Task):
    """Rows with a description; target = description + clean rationale (SFT only)."""

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

    def judged_text(self, reply: str) -> str:
        """The ``<think>`` reasoning when the reply has some, else the whole reply without tags."""
        return super().judged_text(reply) or " ".join(TAG.sub(" ", reply or "").split())
