"""How GRPO chooses what to roll out besides the loader's batch (:class:`PromptSelection`, a mixin of
:class:`vau.modules.grpo.GRPOModule`): extra prompts for dynamic sampling, the pre-rollout skip of settled rows, and
the shuffled-frame copies of a batch for the temporal contrast (T-GRPO). Every draw comes from a stream seeded by
(seed, optimiser step, ..., rank), so the loader's order and exact resume are untouched."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.apply_func import move_data_to_device

from vau.modules.parallel import any_rank, max_over_ranks
from vau.modules.temporal_contrast import right_replies, temporal_bonus, with_bonus


class PromptSelection:
    """Methods of the GRPO module that pick and build the prompts of extra rollouts (needs ``self.trainer``,
    ``self.history``, ``self.contrast``, ``self.G``, ``self.rollout`` and ``self.score``)."""

    def prefilter(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with its settled rows (:class:`vau.modules.dynamic_sampling.SpreadHistory`) replaced by rows
        drawn from a stream seeded by (seed, optimiser step, rank), before any rollout; the batch itself when none
        is skipped."""
        keys = batch.get("keys") or []
        if not keys or any(k is None for k in keys):
            return batch
        rng = np.random.default_rng([int(self.trainer.datamodule.seed), int(self.global_step), 0x5E, self._rank()])
        rows = [int(k[1]) for k in keys]
        skip = [self.history.skips(row, rng) for row in rows]
        if not any(skip):
            return batch
        dataset = self.trainer.datamodule.datasets["train"]
        fresh = iter(self.promising_rows(len(dataset), sum(skip), set(rows), rng))
        chosen = [next(fresh, row) if skipped else row for row, skipped in zip(rows, skip)]
        self.skipped_prompts += sum(a != b for a, b in zip(rows, chosen))
        epoch = int(keys[0][0])
        return move_data_to_device(self.trainer.datamodule.collate([dataset[(epoch, r)] for r in chosen]),
                                   self.device)

    def promising_rows(self, size: int, count: int, exclude: set[int], rng: np.random.Generator) -> list[int]:
        """Up to ``count`` training rows, in a seeded random order, that the skip rule lets through (all rows when
        there is no history)."""
        out = []
        for row in rng.permutation(size).tolist():
            if len(out) == count:
                break
            if row not in exclude and (self.history is None or not self.history.skips(row, rng)):
                out.append(row)
        return out

    @staticmethod
    def _rank() -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def temporal_contrast(self, batch: dict[str, Any], rewards) -> tuple[Any, dict[str, torch.Tensor] | None]:
        """The batch's prompts answered G times on shuffled frames (not trained on), and ``rewards`` with the bonus
        of :func:`vau.modules.temporal_contrast.temporal_bonus`; unchanged (stats None) when a shuffled clip could not
        be read."""
        shuffled = self.shuffled_batch(batch)
        if shuffled is None:
            return rewards, None
        with torch.no_grad():
            other = self.score(self.rollout(shuffled))
        name, at = str(self.contrast.reward), float(self.contrast.correct_at)
        bonus, ordered_acc, shuffled_acc, helped = temporal_bonus(
            right_replies(rewards.per_reward[name], at), right_replies(other.per_reward[name], at), self.G,
            float(self.contrast.alpha), float(self.contrast.mu))
        return with_bonus(rewards, bonus), {"ordered": ordered_acc, "shuffled": shuffled_acc, "helped": helped}

    def shuffled_batch(self, batch: dict[str, Any]) -> dict[str, Any] | None:
        """The same training examples (sample, options, frame positions) with their frames shuffled, collated and
        moved like the batch; None when an example has no dataset key or its video could not be read again."""
        datamodule = self.trainer.datamodule
        keys = batch.get("keys") or []
        if len(keys) != int(batch["size"]) or any(k is None for k in keys):
            return None
        items = [datamodule.datasets["train"].item(k, frames_order="shuffled") for k in keys]
        if any("bad" in item for item in items):
            return None
        return move_data_to_device(datamodule.collate(items), self.device)

    def extra_batch(self, size: int, number: int) -> dict[str, Any]:
        """``size`` further training prompts for extra rollout ``number`` of this step: drawn from the training set by a
        stream seeded by (seed, optimiser step, number, rank), collated and moved like a loader batch."""
        datamodule = self.trainer.datamodule
        dataset = datamodule.datasets["train"]
        rng = np.random.default_rng([int(datamodule.seed), int(self.global_step), int(number), self._rank()])
        if self.history is None:
            indices = rng.choice(len(dataset), size=min(size, len(dataset)), replace=False)
        else:  # rows the skip rule lets through; as many as asked when the rule leaves too few
            indices = self.promising_rows(len(dataset), min(size, len(dataset)), set(), rng)
            rest = [i for i in rng.permutation(len(dataset)).tolist() if i not in set(indices)]
            indices = indices + rest[: min(size, len(dataset)) - len(indices)]
        items = [dataset[(int(self.current_epoch), int(i))] for i in indices]
        return move_data_to_device(datamodule.collate(items), self.device)

    @staticmethod
    def _max_rank(value: int) -> int:
        """The largest ``value`` over the processes."""
        return max_over_ranks(value)

    @staticmethod
    def _any_rank(flag: bool) -> bool:
        """True when ``flag`` holds on any process (all ranks roll out the same number of extra batches)."""
        return any_rank(flag)
