"""Temporal contrast for GRPO (``module.grpo.temporal_contrast``): T-GRPO of Video-R1 (arXiv 2503.21776).

On a share of the optimiser steps, every prompt of the step is also answered G times with the same frames in a
shuffled order (each frame keeps its timestamp: :func:`vau.datamodules.video.shuffle_frames`). Per group, p is the
share of right replies on ordered frames and p~ on shuffled frames; when ``p >= mu * p~`` (order helped, or at
least did not hurt much) every *right ordered* reply of the group gets a bonus ``alpha``. The shuffled replies only
measure p~: they are not trained on. Video-R1 uses alpha = 0.3, mu = 0.8.

Per group, not per batch: Video-R1's released code compares the accuracies averaged over the whole batch, which
equals the per-group rule only with one prompt per batch; here each prompt's group is judged on its own answers.

Which steps contrast is drawn from a stream seeded by (seed, optimiser step), so it is the same on every rank and
after a resume.
"""

from __future__ import annotations

import numpy as np
import torch

from vau.rewards import RewardResult

BONUS = "temporal_contrast"  # the bonus's name among a step's rewards (train/reward/temporal_contrast)


def is_contrast_step(seed: int, step: int, share: float) -> bool:
    """Whether optimiser step ``step`` also rolls out on shuffled frames (a seeded draw with probability ``share``).

    >>> [is_contrast_step(0, s, 1.0) for s in range(3)], [is_contrast_step(0, s, 0.0) for s in range(3)]
    ([True, True, True], [False, False, False])
    """
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    return bool(np.random.default_rng([int(seed), int(step), 0x7C]).random() < share)


def right_replies(values: list[float | None], correct_at: float) -> torch.Tensor:
    """(N,) bool: replies whose accuracy reward reaches ``correct_at`` (a reward that did not apply counts wrong)."""
    return torch.tensor([v is not None and float(v) >= correct_at for v in values], dtype=torch.bool)


def temporal_bonus(ordered: torch.Tensor, shuffled: torch.Tensor, group_size: int, alpha: float, mu: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-group T-GRPO bonus.

    Args:
        ordered: (B*G,) bool, right replies on ordered frames (G consecutive replies per prompt).
        shuffled: (B*G,) bool, right replies of the same prompts on shuffled frames.
        group_size: G.
        alpha: the bonus of a right ordered reply in a group where order helped.
        mu: order helped when the group's ordered accuracy >= mu x its shuffled accuracy.

    Returns:
        (bonus (B*G,), ordered accuracy (B,), shuffled accuracy (B,), helped (B,) bool).

    Example:
        >>> o = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0], dtype=torch.bool)  # group 1: 2/4 right, group 2: 2/4
        >>> s = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)  # shuffled: 0/4 and 4/4
        >>> bonus, p, q, helped = temporal_bonus(o, s, 4, alpha=0.3, mu=0.8)
        >>> [round(b, 4) for b in bonus.tolist()], helped.tolist()
        ([0.3, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [True, False])
    """
    if ordered.shape != shuffled.shape or ordered.numel() % group_size:
        raise ValueError(f"temporal_bonus: {ordered.numel()} ordered and {shuffled.numel()} shuffled replies do not "
                         f"form groups of {group_size}")
    p = ordered.view(-1, group_size).float().mean(dim=1)
    q = shuffled.view(-1, group_size).float().mean(dim=1)
    helped = p >= mu * q
    bonus = float(alpha) * ordered.float() * helped.repeat_interleave(group_size).float()
    return bonus, p, q, helped


def advantage_shift(advantages: torch.Tensor, without: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) mean |change| of each reply's advantage that the bonus made (over its loss tokens when advantages are
    per token, ``turn_credit: per_turn``).

    The bonus adds ``alpha`` to the right replies of a helped group. When the accuracy is 0/1 and nothing else in the
    group's rewards varies, that maps the group's rewards r to (1 + alpha) r + c, and group-std advantages
    (``scale_rewards: group``, Video-R1's) are unchanged: the shift is 0 and T-GRPO trains exactly like GRPO. It moves
    the advantages where other rewards spread too, for a graded accuracy, or under ``scale_rewards: none`` (helped
    groups then weigh up to 1 + alpha times more).

    Example:
        >>> adv = torch.tensor([1.0, -1.0]); advantage_shift(adv, adv, torch.ones(2, 3)).tolist()
        [0.0, 0.0]
    """
    diff = (advantages - without).abs()
    if diff.dim() == 2:
        mask = mask.to(diff.device, diff.dtype)
        diff = (diff * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return diff


def with_bonus(rewards: RewardResult, bonus: torch.Tensor) -> RewardResult:
    """``rewards`` with the bonus added to every total (weight 1, a final-turn reward) and listed as
    :data:`BONUS`; completions left out for a non-finite reward get none."""
    if rewards.skipped is not None:
        bonus = bonus * (~rewards.skipped).to(bonus.dtype)
    bonus = bonus.to(rewards.total.dtype)
    return RewardResult(
        total=rewards.total + bonus, per_reward={**rewards.per_reward, BONUS: [float(b) for b in bonus.tolist()]},
        skipped=rewards.skipped, weights={**(rewards.weights or {}), BONUS: 1.0},
        turns={**(rewards.turns or {}), BONUS: "final"},
    )
