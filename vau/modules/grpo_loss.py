"""GRPO's pieces as pure tensor functions: completion masks, group advantages, the clipped policy loss.

Shapes: ``B`` completions (prompts x generations), ``T`` completion tokens. Every function is deterministic and
independent of the model, so tests can check them against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
IS_LEVELS = ("token", "sequence")


def completion_mask(ids: torch.Tensor, eos_id: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask (B, T) that keeps tokens up to and including the first EOS, and a (B,) flag of truncated completions
    (no EOS within the generated length). ``eos_id``: one id or several (any of them ends a completion)."""
    eos = torch.as_tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=ids.dtype, device=ids.device)
    is_eos = torch.isin(ids, eos)
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, ids.shape[1], dtype=torch.long))
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return (positions <= first.unsqueeze(1)).float(), ~has_eos


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4,
                     valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages of ``rewards`` (B,) ordered as consecutive groups of ``group_size`` completions per prompt.

    ``scale``: ``group`` divides by each group's std (GRPO), ``batch`` by the whole batch's std, ``none`` only
    centres (Dr. GRPO). ``valid`` (B,) bool leaves completions out (e.g. a non-finite reward that was skipped): the
    group statistics use the others, and a left-out completion gets advantage 0. Returns the advantages and a
    (B / group_size,) flag of groups whose (valid) rewards are all equal, or that have fewer than two valid ones.
    """
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale!r}: use one of {SCALE_REWARDS}")
    if valid is not None and not bool(valid.all()):
        return _masked_group_advantages(rewards, group_size, scale, eps, valid.to(rewards.device))
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    group_std = grouped.std(dim=1, unbiased=True) if group_size > 1 else torch.zeros(grouped.shape[0])
    zero_std = group_std < 1e-6
    if scale == "group":
        std = group_std.repeat_interleave(group_size)
        # A group whose rewards are all equal has zero advantage whatever eps is (no 0/0).
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    elif scale == "batch":
        centred = centred / (rewards.std() + eps) if rewards.numel() > 1 else centred
    return centred, zero_std


def _masked_group_advantages(rewards: torch.Tensor, group_size: int, scale: str, eps: float,
                             valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`group_advantages` over the ``valid`` completions only (the others get 0)."""
    keep = valid.view(-1, group_size).to(rewards.dtype)
    # left-out entries may hold anything (even NaN): zero them before any arithmetic
    grouped = torch.where(keep > 0, rewards.view(-1, group_size), torch.zeros_like(keep))
    count = keep.sum(dim=1, keepdim=True)
    mean = grouped.sum(dim=1, keepdim=True) / count.clamp(min=1)
    centred = (grouped - mean) * keep
    group_std = ((centred ** 2).sum(dim=1) / (count.squeeze(1) - 1).clamp(min=1)).sqrt()
    zero_std = (group_std < 1e-6) | (count.squeeze(1) < 2)
    centred = centred.view(-1)
    if scale == "group":
        std = torch.where(zero_std, torch.zeros_like(group_std), group_std).repeat_interleave(group_size)
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    elif scale == "batch":
        kept = rewards[valid]
        if kept.numel() > 1:
            centred = centred / (kept.std() + eps)
    return centred, zero_std


def per_turn_advantages(first: torch.Tensor, final: torch.Tensor, first_turn_tokens: torch.Tensor,
                        num_tokens: int) -> torch.Tensor:
    """Per-token advantages (B, T) of a two-turn reply (``module.grpo.turn_credit: per_turn``).

    Tokens ``[0, first_turn_tokens)`` of each completion (its first answer, up to the first ``</answer>``) get
    ``first``, the advantage of the first-answer reward; the rest (reflection and revised answer) get ``final``.
    A completion with ``first_turn_tokens`` 0 (no first answer) is all final turn. So the first answer's tokens are
    never credited for a correction that follows them (SCoRe, arXiv 2409.12917).

    Example:
        >>> per_turn_advantages(torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([2]), 4).tolist()
        [[1.0, 1.0, -1.0, -1.0]]
    """
    positions = torch.arange(num_tokens, device=first.device).unsqueeze(0)
    in_first = positions < first_turn_tokens.to(first.device).unsqueeze(1)
    return torch.where(in_first, first.unsqueeze(1), final.unsqueeze(1))


@dataclass
class LossStats:
    kl: torch.Tensor
    clip_low: torch.Tensor
    clip_high: torch.Tensor
    clip_region: torch.Tensor


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                loss_type: str = "grpo", epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.0,
                ref_logps: torch.Tensor | None = None, importance_sampling_level: str = "token",
                max_completion_length: int | None = None, num_items: torch.Tensor | float | None = None
                ) -> tuple[torch.Tensor, LossStats]:
    """Clipped surrogate loss with an optional k3 KL penalty to a reference policy.

    Args:
        logps, old_logps, ref_logps: (B, T) per-token log-probs under the current, rollout and reference policy.
        advantages: (B,) one advantage per completion, or (B, T) one per token (per-turn credit).
        mask: (B, T) 1 for completion tokens that count.
        loss_type: how per-token losses are averaged:
            ``grpo`` mean over each sequence's tokens, then over sequences;
            ``bnpo`` mean over all tokens of the local batch;
            ``dr_grpo`` sum over tokens / (B x max_completion_length) (no length bias);
            ``dapo`` sum over tokens / tokens in the global batch (``num_items``, summed over processes).
        importance_sampling_level: ``token`` (one ratio per token) or ``sequence`` (GSPO: the geometric mean
            ratio of the sequence, shared by its tokens).
        epsilon_low, epsilon_high: the ratio is clipped to [1 - epsilon_low, 1 + epsilon_high].

    Returns:
        The scalar loss and :class:`LossStats` (masked means of KL and of the clipped-token fractions).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: use one of {LOSS_TYPES}")
    if importance_sampling_level not in IS_LEVELS:
        raise ValueError(f"importance_sampling_level={importance_sampling_level!r}: use one of {IS_LEVELS}")
    # Positions out of the loss (padding, video tokens, a look turn's text) may hold any log-prob, and the policy and
    # its reference can disagree there without bound: zeroed before exp, so an overflow there cannot turn the masked
    # sum, or its gradient (inf x 0), into NaN.
    keep = mask > 0
    log_ratio = torch.where(keep, logps - old_logps, 0.0)
    if importance_sampling_level == "sequence":
        seq = (log_ratio * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        # One ratio per sequence (the geometric mean of its token ratios); gradients reach every token's logp.
        log_ratio = seq.expand_as(logps)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = torch.zeros_like(logps)
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps")
        delta = torch.where(keep, ref_logps - logps, 0.0)
        kl = torch.exp(delta) - delta - 1  # k3 estimator: unbiased, always >= 0
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type=dr_grpo needs max_completion_length")
        loss = (per_token * mask).sum() / (logps.shape[0] * max_completion_length)
    else:
        denom = torch.as_tensor(num_items if num_items is not None else mask.sum(), dtype=per_token.dtype)
        loss = (per_token * mask).sum() / denom.clamp(min=1.0)
    low = ((ratio < 1 - epsilon_low) & (adv < 0)).float()
    high = ((ratio > 1 + epsilon_high) & (adv > 0)).float()
    stats = LossStats(kl=_masked_mean(kl.detach(), mask), clip_low=_masked_mean(low, mask),
                      clip_high=_masked_mean(high, mask), clip_region=_masked_mean(((low + high) > 0).float(), mask))
    return loss, stats
