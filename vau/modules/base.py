"""What SFT and GRPO share: the backbone, generation, eval metrics, optimizer/schedule, predictions file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vau.datamodules.encoding import model_inputs
from vau.metrics import task_metrics
from vau.modules.backbones import Backbone
from vau.modules.optim import build_optimizer, warmup_schedule

log = logging.getLogger(__name__)


class VAUModule(L.LightningModule):
    """Base LightningModule over one backbone and one task.

    Args:
        backbone: the loaded model + processor.
        optim: config node with ``lr``, ``weight_decay``, ``warmup_ratio``, ``decay``, ``min_lr_ratio``.
        task: the task name (picks eval metrics).
        generation: config node for eval generation (``max_new_tokens``).
        predictions_dir: where test predictions (JSON lines usable by ``python -m vau score``) are written.
        rewards: optional :class:`vau.rewards.RewardSet`; its per-reward means are logged on eval replies too.
    """

    def __init__(self, backbone: Backbone, optim, task: str, generation=None, predictions_dir: str | None = None,
                 rewards=None) -> None:
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps whatever mode it finds
        self.optim_cfg = optim
        self.task = task
        self.max_new_tokens = int((generation or {}).get("max_new_tokens", 64))
        self.predictions_dir = predictions_dir
        self.rewards = rewards
        self.val_metrics = torch.nn.ModuleDict(task_metrics(task))
        self.test_metrics = torch.nn.ModuleDict(task_metrics(task))
        self._predictions: list[dict] = []

    # -- generation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, **sampling) -> torch.Tensor:
        """Completion token ids (B, T) for prompt ``inputs``, prompt removed; padded with the pad id after EOS."""
        prompt_len = inputs["input_ids"].shape[1]
        sampling.setdefault("suppress_tokens", self.vision_token_ids())
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=self.backbone.pad_id,
                                      **sampling)
        finally:
            self.model.train(was_training)
        return out[:, prompt_len:]

    def vision_token_ids(self) -> list[int]:
        """Placeholder tokens a reply must never contain: a sampled <|video_pad|> would make the next forward pass
        expect one more video patch than the inputs hold (and crash)."""
        tok = self.backbone.processor.tokenizer
        names = ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")
        ids = [tok.convert_tokens_to_ids(n) for n in names]
        return sorted({i for i in ids if isinstance(i, int) and i != tok.unk_token_id and i >= 0})

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.backbone.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def generate_replies(self, batch: dict[str, Any], max_new_tokens: int | None = None) -> list[str]:
        """Greedy replies, as text."""
        inputs = model_inputs(batch, prompt_only=True)
        return self.decode(self.generate_ids(inputs, max_new_tokens or self.max_new_tokens, do_sample=False))

    # -- evaluation -------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, Any], metrics: torch.nn.ModuleDict, stage: str) -> None:
        if not batch["size"]:
            return
        if "labels" in batch and (batch["labels"] != -100).any():
            out = self.model(**model_inputs(batch), labels=batch["labels"])
            self.log(f"{stage}/loss", out.loss, batch_size=batch["size"], sync_dist=True)
        replies = self.generate_replies(batch)
        for metric in metrics.values():
            metric.update(replies, batch["samples"])
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, batch_size=batch["size"])
        if self.rewards is not None:
            result = self.rewards(replies, list(batch["samples"]))
            for name, value in result.means().items():
                self.log(f"{stage}/reward/{name}", value, batch_size=batch["size"], sync_dist=True)
        if stage == "test":
            self._predictions += [{"video": s.video, "task": s.task, "response": r}
                                  for s, r in zip(batch["samples"], replies)]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        if self.predictions_dir and self._predictions:
            path = Path(self.predictions_dir) / f"predictions_rank{self.global_rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(p) + "\n" for p in self._predictions))
            log.info("wrote %d test predictions to %s", len(self._predictions), path)
        self._predictions = []

    # -- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = build_optimizer(self.model.parameters(), self.optim_cfg)
        sched = warmup_schedule(
            opt, self.trainer.estimated_stepping_batches, warmup_ratio=float(self.optim_cfg.get("warmup_ratio", 0.0)),
            decay=str(self.optim_cfg.get("decay", "cosine")), min_lr_ratio=float(self.optim_cfg.get("min_lr_ratio", 0.0)),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def log_lr(self, batch_size: int) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
