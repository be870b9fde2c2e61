"""Supervised fine-tuning: teacher-forced loss on the assistant's tokens only."""

from __future__ import annotations

from typing import Any

from vau.datamodules.encoding import model_inputs
from vau.modules.base import VAUModule
from vau.registry import ALGORITHMS


@ALGORITHMS.register("sft")
class SFTModule(VAUModule):
    """Supervised fine-tuning: teacher-forced cross-entropy on the target reply's tokens.

    Labels are ``-100`` on prompt, video and padding positions (see :class:`vau.datamodules.encoding.Collator`),
    so the loss is the mean over target tokens and the closing end-of-turn token.
    Validation/test generate replies and report the task metrics (see :class:`VAUModule`).
    """

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        if not batch["size"]:
            return None  # every video in the batch was unusable (counted by BadVideoMonitor)
        out = self.model(**model_inputs(batch), labels=batch["labels"])
        self._loss_terms = {"logits": out.logits}  # named in the error if the loss is not finite
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["size"])
        self.log_lr(batch["size"])
        return out.loss
