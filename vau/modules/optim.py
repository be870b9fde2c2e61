"""Optimizer and learning-rate schedule from the ``optim`` config node."""

from __future__ import annotations

import math

import torch


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    name = str(cfg.get("name", "adamw")).lower()
    if name != "adamw":
        raise ValueError(f"optim.name={name!r} is not supported; use adamw")
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=float(cfg.lr), weight_decay=float(cfg.get("weight_decay", 0.0)),
        betas=tuple(cfg.get("betas", (0.9, 0.999))),
    )


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.0,
                    warmup_steps: int | None = None, decay: str = "cosine", min_lr_ratio: float = 0.0):
    """Linear warmup, then ``cosine``, ``linear`` or ``constant`` until ``total_steps`` (stepped per optimizer step)."""
    total = max(int(total_steps), 1)
    warm = int(warmup_steps) if warmup_steps is not None else int(round(warmup_ratio * total))
    if decay not in ("cosine", "linear", "constant"):
        raise ValueError(f"optim.decay={decay!r}: use cosine, linear or constant")

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if decay == "constant":
            return 1.0
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
