"""Exact mid-epoch resume of the training order, on one process or split over data-parallel ranks.

Lightning restores the loop counters of a checkpoint saved mid-epoch, but re-iterates a plain DataLoader from
the epoch's first batch, so a resumed run trains on batches it has already seen and skips others. Here the
datamodule records how many batches of which epoch the checkpoint includes (:func:`train_position`), and the
next training loader starts right after them (:class:`ResumableSampler`), without decoding the skipped videos.

The sampler is a ``DistributedSampler`` subclass so that Lightning leaves it alone under DDP/FSDP2 instead of
wrapping it: the rank split happens here, *before* the skip, in the same way as Lightning's own wrapper splits
the order (pad to a multiple of the world size with the head, then every ``world``-th item from ``rank``). The
same seed therefore gives the same global batches on 1 or N processes, and after a resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """This rank's share of an epoch-keyed sampler's order, optionally starting ``start`` items into one epoch.

    Args:
        inner: a sampler with ``set_epoch`` whose order depends only on (seed, epoch), e.g.
            :class:`vau.datamodules.loading.EpochSampler`.
        num_replicas: data-parallel world size.
        rank: this process's data-parallel rank.
        epoch: the epoch the first iteration belongs to.
        start: items of *this rank's* share to skip in ``epoch`` (batches done x batch size); used once.
    """

    def __init__(self, inner, num_replicas: int = 1, rank: int = 0, epoch: int = 0, start: int = 0) -> None:
        # DistributedSampler.__init__ wants a dataset and an initialised process group; we need neither.
        self.inner = inner
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = False  # the inner sampler shuffles
        self.drop_last = False
        self.seed = getattr(inner, "seed", 0)
        self.num_samples = math.ceil(len(inner) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self._start = int(start)
        self._start_epoch = int(epoch)
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.inner.set_epoch(self.epoch)

    def __len__(self) -> int:
        # The full share: Lightning counts the epoch's batches from it and its restored progress covers the skip.
        return self.num_samples

    def __iter__(self) -> Iterator[Any]:
        order = list(self.inner)
        if order and len(order) < self.total_size:
            order += (order * math.ceil(self.total_size / len(order)))[: self.total_size - len(order)]
        mine = order[self.rank: self.total_size: self.num_replicas]
        if self._start and self.epoch == self._start_epoch:
            mine = mine[self._start:]
        self._start = 0
        return iter(mine)


def data_parallel_rank(trainer) -> tuple[int, int]:
    """(world size, rank) of the data-parallel group Lightning would shard the training data over."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    try:
        kwargs = strategy.distributed_sampler_kwargs if strategy is not None else None
    except (AttributeError, AssertionError, RuntimeError):
        kwargs = None
    if not kwargs or not trainer._accelerator_connector.use_distributed_sampler:
        return 1, 0
    return int(kwargs["num_replicas"]), int(kwargs["rank"])


def train_position(trainer) -> dict[str, int]:
    """The epoch and the number of its batches a checkpoint written now includes (empty outside fitting)."""
    from lightning.pytorch.trainer.states import TrainerFn

    if trainer is None or trainer.state.fn != TrainerFn.FITTING:
        return {}
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    # `processed` counts batches whose step (and on_train_batch_end, where ModelCheckpoint saves) has run.
    return {"epoch": int(trainer.current_epoch), "batches": int(progress.processed)}


def resumable_train_sampler(inner, trainer, position: dict | None, batch_size: int) -> ResumableSampler:
    """Wrap the training sampler: split over data-parallel ranks, start after the batches ``position`` covers.

    Args:
        inner: the epoch-keyed training sampler.
        trainer: the Lightning trainer (or None outside one).
        position: :func:`train_position` of the checkpoint being resumed, or None.
        batch_size: per-process batch size.
    """
    world, rank = data_parallel_rank(trainer)
    # Lightning sets the sampler epoch only after it has already drawn the first batch of a resumed epoch.
    epoch = int(trainer.fit_loop.epoch_progress.current.processed) if trainer is not None else 0
    start = 0
    if position and int(position.get("epoch", -1)) == epoch:
        per_rank_batches = math.ceil(math.ceil(len(inner) / world) / batch_size)
        done = int(position.get("batches", 0))
        if done < per_rank_batches:  # a checkpoint from the end of the epoch starts the next one from scratch
            start = done * batch_size
    return ResumableSampler(inner, world, rank, epoch, start)
