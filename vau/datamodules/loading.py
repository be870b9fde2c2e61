"""Training order: which example comes when, the same for a seed whatever the number of DataLoader workers.

:class:`EpochSampler` runs in the main process and yields ``(epoch, index)`` pairs. The dataset seeds a
training draw (e.g. the ``random_segment`` frame positions) from ``(seed, epoch, index)``, so the frames an
example gets depend on the epoch and never on which worker process decoded it or how many there are. Lightning
calls :meth:`EpochSampler.set_epoch` at the start of every epoch (also through its DDP sampler wrapper), which is
why the epoch lives here and not in the dataset: with persistent workers, a dataset attribute set in the main
process would never reach the workers' copies.

With task weights (the ``mixed`` view), an epoch holds each task's share of ``num_samples``: each task's
samples are drawn without replacement, cycling through fresh permutations when its share exceeds its size.

Example:
    >>> sampler = EpochSampler(["qa", "qa", "tag"], seed=0)
    >>> sampler.set_epoch(3)
    >>> sorted(index for _, index in sampler)
    [0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Sampler


def _quotas(sizes: dict[str, int], weights: Mapping[str, float], total: int) -> dict[str, int]:
    # Largest-remainder rounding: the quotas add up to exactly `total`.
    live = {t: float(weights.get(t, 0.0)) for t in sizes if sizes[t] > 0 and weights.get(t, 0.0) > 0}
    norm = sum(live.values())
    exact = {t: total * w / norm for t, w in live.items()}
    quotas = {t: int(np.floor(x)) for t, x in exact.items()}
    for t in sorted(exact, key=lambda t: (quotas[t] - exact[t], t))[: total - sum(quotas.values())]:
        quotas[t] += 1
    return quotas


class EpochSampler(Sampler):
    """Deterministic per-(seed, epoch) training order over samples grouped by task.

    Args:
        groups: the task name of every sample (``[s.task for s in samples]``).
        weights: task -> weight (the ``mixed`` view's ``data.mix.weights``); None = every sample once per epoch.
        num_samples: examples per epoch (``data.mix.epoch_size``); None = the number of samples.
        shuffle: False keeps file order (weights still decide the counts).
        seed: the run's seed.
    """

    def __init__(self, groups: Sequence[str], weights: Mapping[str, float] | None = None,
                 num_samples: int | None = None, shuffle: bool = True, seed: int = 0) -> None:
        self.groups = list(groups)
        self.weights = dict(weights) if weights else None
        self.num_samples = int(num_samples) if num_samples else len(self.groups)
        if self.num_samples < 0:
            raise ValueError(f"data.mix.epoch_size must be >= 1, got {num_samples}")
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.tasks = list(dict.fromkeys(self.groups))
        self.members = {t: np.array([i for i, g in enumerate(self.groups) if g == t], dtype=np.int64)
                        for t in self.tasks}
        if self.weights is not None and not _quotas({t: len(m) for t, m in self.members.items()}, self.weights, 1):
            raise ValueError(f"no task with samples has a positive weight: weights {self.weights}, "
                             f"tasks with samples {self.tasks}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples if self.weights is not None else len(self.groups)

    def _order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            order = np.arange(len(self.groups))
            return rng.permutation(order) if self.shuffle else order
        sizes = {t: len(m) for t, m in self.members.items()}
        picks = []
        for k, (task, quota) in enumerate(_quotas(sizes, self.weights, self.num_samples).items()):
            members = self.members[task]
            task_rng = np.random.default_rng([self.seed, self.epoch, 1 + k])
            rounds = -(-quota // len(members))
            stream = [task_rng.permutation(members) if self.shuffle else members for _ in range(rounds)]
            picks.append(np.concatenate(stream)[:quota] if stream else members[:0])
        order = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
        return rng.permutation(order) if self.shuffle else np.sort(order, kind="stable")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in self._order()])
