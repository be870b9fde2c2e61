"""Dynamic sampling for GRPO (``module.grpo.dynamic_sampling``): groups whose rewards have no spread teach nothing
(every advantage is 0), so they are dropped and replaced by groups of further prompts, rolled out until the
optimiser step has its ``data.batch_size`` groups with spread or ``max_extra_batches`` extra rollouts are spent
(DAPO, arXiv 2503.14476, "dynamic sampling"; verl ``algorithm.filter_groups``).

How a step with refills is computed (:meth:`vau.modules.grpo.GRPOModule.training_step`): the step's own batch and
each extra batch are separate *parts* (rollout, rewards, advantages, each normalised within its groups as always);
the loss of every part is back-propagated with a weight (:func:`part_weights`) so that the gradient equals that of
one batch made of the kept groups, and one optimiser step follows. Extra prompts are drawn from the training set
by a stream of their own, seeded by (seed, optimiser step, extra batch, rank), so the main data order and its exact
resume are untouched, and a resumed run draws the same extra prompts. All ranks roll out the same number of extra
batches (the largest any rank needs: collectives must match); a rank that is already full masks its share out.

``skip_settled: true`` adds a filter *before* the rollout (:class:`SpreadHistory`): rows whose latest groups had no
spread are skipped with a probability that grows with how many in a row, and replaced by rows drawn from the same
seeded stream, in the step's own batch and in every extra batch, so fewer rollouts are spent on groups that will be
dropped. The history is per rank; every rank's is saved in checkpoints (exact resume).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vau.rewards import RewardResult


def group_spread(rewards: RewardResult, metric: str, G: int) -> torch.Tensor:
    """(B,) bool: whether the group's values of ``metric`` (``total`` or one reward's name) differ. Completions left out
    for a non-finite reward and rewards that did not apply (None) do not count.

    >>> r = RewardResult(torch.tensor([1.0, 1.0, 0.0, 2.0]), {"acc": [1.0, 1.0, None, 1.0]})
    >>> group_spread(r, "total", 2).tolist(), group_spread(r, "acc", 2).tolist()
    ([False, True], [False, False])
    """
    if metric == "total":
        values = [float(v) for v in rewards.total.tolist()]
    elif metric in rewards.per_reward:
        values = [None if v is None else float(v) for v in rewards.per_reward[metric]]
    else:
        raise ValueError(f"module.grpo.dynamic_sampling.metric={metric!r}: use 'total' or one of the configured "
                         f"rewards {sorted(rewards.per_reward)}")
    skipped = rewards.skipped.tolist() if rewards.skipped is not None else [False] * len(values)
    out = []
    for start in range(0, len(values), G):
        used = [v for v, s in zip(values[start:start + G], skipped[start:start + G]) if v is not None and not s]
        out.append(len(used) > 1 and max(used) - min(used) > 1e-12)
    return torch.tensor(out, dtype=torch.bool)


def take_groups(spread: torch.Tensor, need: int) -> torch.Tensor:
    """(B,) bool: the first ``need`` groups with spread (in batch order).

    >>> take_groups(torch.tensor([True, False, True, True]), 2).tolist()
    [True, False, True, False]
    """
    return spread & (torch.cumsum(spread.long(), 0) <= max(0, need))


def part_weights(loss_type: str, rows: list[int], kept_rows: list[int], kept_tokens: list[float]) -> list[float]:
    """The weight of each part's loss so that their weighted sum is the loss of one batch of the kept completions.

    A part's loss is normalised over its own rows (``grpo``, ``dr_grpo``: masked rows count in the denominator, as in a
    single batch with dropped groups) or its own kept tokens (``bnpo``); ``dapo`` normalises every part by the
    step's kept tokens already (its ``num_items``), so each weighs 1.

    >>> part_weights("grpo", [8, 8], [4, 8], [10.0, 30.0])
    [0.6666666666666666, 0.6666666666666666]
    >>> part_weights("bnpo", [8, 8], [4, 8], [10.0, 30.0])
    [0.25, 0.75]
    """
    if loss_type == "dapo":
        return [1.0] * len(rows)
    if loss_type == "bnpo":
        total = sum(kept_tokens)
        return [t / total if total else 0.0 for t in kept_tokens]
    total = sum(kept_rows)
    return [r / total if total else 0.0 for r in rows]


def concat_rewards(results: list[RewardResult]) -> RewardResult:
    """The rewards of several parts as one result (for the step's logs)."""
    if len(results) == 1:
        return results[0]
    per_reward = {name: [v for r in results for v in r.per_reward.get(name, [None] * len(r.total))]
                  for name in dict.fromkeys(n for r in results for n in r.per_reward)}
    skipped = None
    if any(r.skipped is not None for r in results):
        skipped = torch.cat([r.skipped if r.skipped is not None else torch.zeros(len(r.total), dtype=torch.bool)
                             for r in results])
    return RewardResult(torch.cat([r.total for r in results]), per_reward, skipped, results[0].weights,
                        results[0].turns)


class SpreadHistory:
    """Per training row, how many of its latest groups in a row had no reward spread: the pre-rollout skip of
    ``module.grpo.dynamic_sampling.skip_settled`` (after GRESO, arXiv 2506.02177: a prompt without spread in one epoch
    is likely to stay so). A row whose last z groups lacked spread is skipped before its rollout with probability
    ``1 - revisit ** z`` and replaced by another row; ``revisit`` keeps settled rows coming back now and then, since a
    solved row can be failed again and an unsolved one become learnable.

    Example:
        >>> history = SpreadHistory(revisit=0.0)
        >>> history.observe([3, 4], torch.tensor([False, True]))
        >>> history.settled(3), history.settled(4), history.skips(3, np.random.default_rng(0))
        (1, 0, True)
    """

    def __init__(self, revisit: float = 0.25) -> None:
        if not 0.0 <= float(revisit) <= 1.0:
            raise ValueError(f"module.grpo.dynamic_sampling.revisit={revisit}: give a probability in [0, 1]")
        self.revisit = float(revisit)
        self.runs: dict[int, int] = {}

    def observe(self, rows: list[int], spread: torch.Tensor) -> None:
        """Record the groups of ``rows`` (one per row): spread resets a row's count, no spread adds one."""
        for row, has in zip(rows, spread.tolist()):
            self.runs[int(row)] = 0 if has else self.runs.get(int(row), 0) + 1

    def settled(self, row: int) -> int:
        return self.runs.get(int(row), 0)

    def skips(self, row: int, rng: np.random.Generator) -> bool:
        """Whether to skip ``row`` before its rollout this time (one draw from ``rng``)."""
        z = self.settled(row)
        return z > 0 and bool(rng.random() >= self.revisit ** z)

    def state_dict(self) -> dict[str, Any]:
        return {"revisit": self.revisit, "runs": dict(self.runs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.runs = {int(k): int(v) for k, v in (state.get("runs") or {}).items()}
