"""Reward plugins and the weighted set the GRPO module (and SFT evaluation) calls.

A reward is a plain callable registered in :data:`vau.registry.REWARDS`::

    @REWARDS.register("my_reward")
    def my_reward(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
        ...

It returns one value per completion: a float in its documented range, or None where it does not apply
(e.g. a temporal-IoU reward on a QA sample). It never raises on any text. A reward that raises, or returns NaN/inf,
stops the run with a :class:`RewardError` naming the reward and the sample (GRPO can instead skip completions with a
non-finite reward: ``module.grpo.nonfinite_rewards=skip``). ``ctx`` carries extras such as
``completion_lengths`` (tokens per completion) and ``max_new_tokens``; take what you need, ignore the rest
with ``**ctx``. A registered class is instantiated once with the config keys of its entry; a registered
function receives those keys as keyword arguments on every call.

Config (group ``reward``) maps names to entries: ``{format: {weight: 1.0}, temporal_iou: {weight: 1.0}}``.
GRPO with an empty ``reward`` node (``reward=none``) uses its tasks' own sets (``Task.default_rewards``).

Turns: a reward that scores only the first answer of a reflecting reply (``initial_accuracy``) is marked
``turn = "first"`` (a function attribute; a config entry can set ``turn: first | final``). GRPO with
``module.grpo.turn_credit: per_turn`` credits the tokens of the first answer with the first-turn rewards only and
the rest of the reply with the others (:meth:`RewardResult.turn_totals`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from vau.registry import REWARDS
from vau.rewards import accuracy, format, length, temporal  # noqa: F401  (importing registers them)

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("error", "skip")
TURNS = ("first", "final")


class RewardError(RuntimeError):
    """A reward plugin raised, or returned a value that is not a finite number; the message names the reward and the
    sample (video and task) it was scoring."""


def describe_sample(sample) -> str:
    """``video 'x.mp4' (task qa)`` for a :class:`vau.tasks.Sample`; whatever else a caller passed, as repr."""
    if hasattr(sample, "video") and hasattr(sample, "task"):
        return f"video {sample.video!r} (task {sample.task})"
    return f"sample {sample!r}"


def _snippet(text) -> str:
    text = text if isinstance(text, str) else repr(text)
    return repr(text if len(text) <= 80 else text[:77] + "...")


@dataclass
class RewardResult:
    """Scores of one batch of completions.

    Attributes:
        total: (N,) weighted sum; a reward that returned None for a completion contributes 0 to it.
        per_reward: each reward's raw values (None where not applicable), by name.
        skipped: (N,) bool, completions with a non-finite reward under ``nonfinite="skip"`` (their ``total`` is 0 and
            their per-reward values None; they must not enter a loss). None when nothing was skipped.
    """

    total: torch.Tensor
    per_reward: dict[str, list[float | None]]
    skipped: torch.Tensor | None = None
    weights: dict[str, float] | None = None
    turns: dict[str, str] | None = None

    def turn_totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) weighted sums of the first-turn rewards and of the final-turn rewards (their sum is ``total``).

        Example:
            >>> r = RewardResult(torch.tensor([1.5]), {"initial_accuracy": [1.0], "choice_accuracy": [0.5]},
            ...                  weights={"initial_accuracy": 1.0, "choice_accuracy": 1.0},
            ...                  turns={"initial_accuracy": "first", "choice_accuracy": "final"})
            >>> [t.tolist() for t in r.turn_totals()]
            [[1.0], [0.5]]
        """
        first = torch.zeros_like(self.total)
        for name, values in self.per_reward.items():
            if (self.turns or {}).get(name) == "first":
                weight = (self.weights or {}).get(name, 1.0)
                first += weight * torch.tensor([0.0 if v is None else v for v in values], dtype=self.total.dtype)
        return first, self.total - first

    @property
    def num_skipped(self) -> int:
        return 0 if self.skipped is None else int(self.skipped.sum())

    def means(self) -> dict[str, float]:
        """Mean of every reward over the completions it applied to (rewards that applied to none are left out)."""
        out = {}
        for name, values in self.per_reward.items():
            used = [v for v in values if v is not None]
            if used:
                out[name] = sum(used) / len(used)
        kept = self.total if self.skipped is None else self.total[~self.skipped]
        out["total"] = float(kept.mean()) if len(kept) else float("nan")
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
        self.turns: dict[str, str] = {}
        for name, entry in (config or {}).items():
            entry = dict(entry or {})
            self.weights[name] = float(entry.pop("weight", 1.0))
            builder = REWARDS.get(name)
            turn = str(entry.pop("turn", getattr(builder, "turn", "final")))
            if turn not in TURNS:
                raise ValueError(f"reward.{name}.turn={turn!r}: use one of {TURNS}")
            self.turns[name] = turn
            self.functions[name] = builder(**entry) if inspect.isclass(builder) else functools.partial(builder, **entry)

    def __len__(self) -> int:
        return len(self.functions)

    def __call__(self, completions: list[str], samples: list, *, nonfinite: str = "error", **ctx) -> RewardResult:
        """Score ``completions`` (one per entry of ``samples``) with every reward; ``ctx`` goes to each reward.

        Args:
            nonfinite: what a NaN/inf (or non-numeric) reward value does: ``error`` raises :class:`RewardError`;
                ``skip`` marks that completion in :attr:`RewardResult.skipped` (logged as a warning) and leaves it out
                of ``total`` and of the per-reward values.

        Raises:
            RewardError: a reward raised (chained to its exception), returned the wrong number of values, or (with
                ``nonfinite="error"``) a value that is not a finite number.
        """
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={nonfinite!r}: use one of {NONFINITE_POLICIES}")
        n = len(completions)
        raw: dict[str, list] = {}
        skipped = [False] * n
        for name, fn in self.functions.items():
            try:
                values = list(fn(completions, samples, **ctx))
            except Exception as err:
                raise RewardError(f"reward {name!r} raised {type(err).__name__}: {err} "
                                  f"({self._culprit(name, fn, completions, samples, ctx)})") from err
            if len(values) != n:
                raise RewardError(f"reward {name!r} returned {len(values)} values for {n} completions")
            for i, value in enumerate(values):
                if value is None:
                    continue
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = float("nan")
                if math.isfinite(number):
                    continue
                where = (f"reward {name!r} returned {value!r} for completion {i} of {n}, "
                         f"{describe_sample(samples[i]) if i < len(samples) else 'no sample'}: {_snippet(completions[i])}")
                if nonfinite == "error":
                    raise RewardError(f"{where}. Rewards must be finite numbers or None (not applicable); to drop "
                                      f"such completions from GRPO instead, set module.grpo.nonfinite_rewards=skip")
                log.warning("skipping a completion: %s", where)
                skipped[i] = True
            raw[name] = values
        per_reward: dict[str, list[float | None]] = {}
        total = torch.zeros(n, dtype=torch.float32)
        for name, values in raw.items():
            kept = [None if v is None or skipped[i] else float(v) for i, v in enumerate(values)]
            per_reward[name] = kept
            total += self.weights[name] * torch.tensor([0.0 if v is None else v for v in kept], dtype=torch.float32)
        return RewardResult(total=total, per_reward=per_reward,
                            skipped=torch.tensor(skipped, dtype=torch.bool) if any(skipped) else None,
                            weights=dict(self.weights), turns=dict(self.turns))

    @staticmethod
    def _culprit(name: str, fn: Callable, completions: list[str], samples: list, ctx: dict) -> str:
        """Which sample makes reward ``fn`` raise: each completion is scored alone (only on this error path)."""
        for i, (text, sample) in enumerate(zip(completions, samples)):
            one = {k: ([v[i]] if isinstance(v, (list, tuple)) and len(v) == len(completions) else v)
                   for k, v in ctx.items()}
            try:
                fn([text], [sample], **one)
            except Exception:
                return f"on completion {i} of {len(completions)}, {describe_sample(sample)}: {_snippet(text)}"
        return "scoring the batch of " + ", ".join(describe_sample(s) for s in samples[:8]) + \
            (" ..." if len(samples) > 8 else "")


def build_rewards(config: Mapping | None) -> RewardSet | None:
    """A :class:`RewardSet` for the ``reward`` config node, or None when it is empty."""
    return RewardSet(config) if config else None
