"""Reward plugins and the weighted set the GRPO module (and SFT evaluation) calls.

A reward is a plain callable registered in :data:`vau.registry.REWARDS`::

    @REWARDS.register("my_reward")
    def my_reward(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
        ...

It returns one value per completion: a float in its documented range, or None where it does not apply
(e.g. a temporal-IoU reward on a QA sample). It never raises on any text. ``ctx`` carries extras such as
``completion_lengths`` (tokens per completion) and ``max_new_tokens``; take what you need, ignore the rest
with ``**ctx``. A registered class is instantiated once with the config keys of its entry; a registered
function receives those keys as keyword arguments on every call.

Config (group ``reward``) maps names to entries: ``{format: {weight: 1.0}, temporal_iou: {weight: 1.0}}``.
GRPO with an empty ``reward`` node (``reward=none``) uses its tasks' own sets (``Task.default_rewards``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from vau.registry import REWARDS
from vau.rewards import accuracy, format, length, temporal  # noqa: F401  (importing registers them)

BUILTIN_MODULES = ("vau.rewards.format", "vau.rewards.accuracy", "vau.rewards.temporal", "vau.rewards.length")


@dataclass
class RewardResult:
    """Scores of one batch of completions.

    Attributes:
        total: (N,) weighted sum; a reward that returned None for a completion contributes 0 to it.
        per_reward: each reward's raw values (None where not applicable), by name.
    """

    total: torch.Tensor
    per_reward: dict[str, list[float | None]]

    def means(self) -> dict[str, float]:
        """Mean of every reward over the completions it applied to (rewards that applied to none are left out)."""
        out = {}
        for name, values in self.per_reward.items():
            used = [v for v in values if v is not None]
            if used:
                out[name] = sum(used) / len(used)
        out["total"] = float(self.total.mean()) if len(self.total) else float("nan")
        return out

    def stds(self) -> dict[str, float]:
        out = {}
        for name, values in self.per_reward.items():
            used = [v for v in values if v is not None]
            if len(used) > 1:
                mean = sum(used) / len(used)
                out[name] = math.sqrt(sum((v - mean) ** 2 for v in used) / (len(used) - 1))
        return out


class RewardSet:
    """The configured rewards with their weights, called together.

    Example:
        >>> from vau.tasks import Sample
        >>> sample = Sample(task="qa", video="v.mp4", options=("a", "b", "c", "d"), answer="B")
        >>> rewards = RewardSet({"format": {"weight": 1.0}, "choice_accuracy": {"weight": 0.5}})
        >>> rewards(["<think>x</think><answer>B</answer>", "C"], [sample, sample]).total.tolist()
        [1.5, 0.0]
    """

    def __init__(self, config: Mapping[str, Mapping] | None) -> None:
        self.weights: dict[str, float] = {}
        self.functions: dict[str, Callable] = {}
        for name, entry in (config or {}).items():
            entry = dict(entry or {})
            self.weights[name] = float(entry.pop("weight", 1.0))
            builder = REWARDS.get(name)
            self.functions[name] = builder(**entry) if inspect.isclass(builder) else functools.partial(builder, **entry)

    def __len__(self) -> int:
        return len(self.functions)

    def __call__(self, completions: list[str], samples: list, **ctx) -> RewardResult:
        per_reward: dict[str, list[float | None]] = {}
        total = torch.zeros(len(completions), dtype=torch.float32)
        for name, fn in self.functions.items():
            values = list(fn(completions, samples, **ctx))
            if len(values) != len(completions):
                raise ValueError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
            per_reward[name] = [None if v is None else float(v) for v in values]
            total += self.weights[name] * torch.tensor([0.0 if v is None else float(v) for v in values])
        return RewardResult(total=total, per_reward=per_reward)


def build_rewards(config: Mapping | None) -> RewardSet | None:
    """A :class:`RewardSet` for the ``reward`` config node, or None when it is empty."""
    return RewardSet(config) if config else None
