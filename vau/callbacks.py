"""Lightning callbacks vau adds to every run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import lightning as L

log = logging.getLogger(__name__)


class BadVideoError(RuntimeError):
    pass


STAGE_SPLIT = {"train": "train", "validation": "val", "test": "test"}


@dataclass
class SplitCount:
    """What :class:`BadVideoMonitor` knows about one split.

    Attributes:
        size: samples of the split (its dataset's length), None when unknown.
        bad: every unusable clip seen so far, keyed by (video, task, row), valued by the video path.
        scored: clips that reached the model in the latest pass over the split (evaluation coverage).
    """

    size: int | None = None
    bad: dict[str, str] = field(default_factory=dict)
    scored: int = 0

    def videos(self) -> list[str]:
        return sorted(set(self.bad.values()))


def split_size(trainer, split: str) -> int | None:
    """The number of samples of ``split``: the DataModule's dataset, else the dataloader's; None if unknown."""
    dataset = (getattr(getattr(trainer, "datamodule", None), "datasets", None) or {}).get(split)
    if dataset is None:
        attr = {"train": "train_dataloader", "val": "val_dataloaders", "test": "test_dataloaders"}[split]
        try:
            loader = getattr(trainer, attr, None)
        except Exception:  # noqa: BLE001  (Lightning raises when no loop has set them up)
            loader = None
        if isinstance(loader, list | tuple):
            loader = loader[0] if loader else None
        dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an iterable dataset has no length
        return None


class BadVideoMonitor(L.Callback):
    """Counts unusable videos the loaders skipped, warns once per file, and stops the run past a fraction.

    A corrupt clip among thousands is survivable, a broken video folder is not. The fraction is judged against
    the split's size (its dataset's length): the run fails as soon as the distinct unusable clips of a split
    exceed ``max_bad_fraction`` (config key ``data.max_bad_fraction``) of that split, i.e. once the final
    fraction is certain to exceed it, whenever in the epoch that happens. Only when the split's size is unknown
    does it fall back to the running fraction, after ``min_seen`` examples. :meth:`summary` gives the skipped
    clips per split for the end-of-run table.
    """

    def __init__(self, max_bad_fraction: float = 0.01, min_seen: int = 20) -> None:
        self.max_bad_fraction = float(max_bad_fraction)
        self.min_seen = int(min_seen)
        self.seen = 0
        self.skipped = 0
        self.warned: set[str] = set()
        self.splits: dict[str, SplitCount] = {}

    def observe(self, batch, split: str = "train", trainer=None) -> None:
        if not isinstance(batch, dict):
            return
        bad = batch.get("bad", [])
        count = self.splits.setdefault(split, SplitCount())
        if count.size is None and trainer is not None:
            count.size = split_size(trainer, split)
        self.seen += batch.get("size", 0) + len(bad)
        self.skipped += len(bad)
        count.scored += batch.get("size", 0)
        for item in bad:
            count.bad[f"{item['video']}|{item.get('task', '')}|{item.get('row', '')}"] = item["video"]
            if item["video"] not in self.warned:
                self.warned.add(item["video"])
                log.warning("skipping unusable video (%d skipped so far): %s", self.skipped, item["error"])
        world = max(1, int(getattr(trainer, "world_size", 1) or 1))
        if count.size:
            # Each process sees about 1/world of the split; more distinct bad clips than the fraction allows of
            # that share means the split as a whole is past the limit.
            n = len(count.bad)
            if n > self.max_bad_fraction * count.size / world:
                raise BadVideoError(
                    f"{n} of {count.size} videos were unusable in the {split} split "
                    f"({n * world / count.size:.1%} of the split > data.max_bad_fraction={self.max_bad_fraction}). "
                    f"First ones: {count.videos()[:5]}. Run `python -m vau data check` on the video folder, or "
                    f"raise data.max_bad_fraction.")
        elif self.seen >= self.min_seen and self.skipped > self.max_bad_fraction * self.seen:
            raise BadVideoError(
                f"{self.skipped} of {self.seen} videos were unusable ({self.skipped / self.seen:.1%} > "
                f"data.max_bad_fraction={self.max_bad_fraction}). First ones: {sorted(self.warned)[:5]}. "
                f"Run `python -m vau data check` on the video folder, or raise data.max_bad_fraction."
            )

    def summary(self) -> dict[str, SplitCount]:
        """Per split seen in this run: its size, the distinct unusable clips and the clips scored last pass
        (all processes of a distributed run merged, once a stage has ended)."""
        return getattr(self, "_merged", None) or self.splits

    def _gather(self) -> None:
        """Merge every process's counts (distributed runs), so rank 0's table covers the whole split."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        mine = {s: (c.size, dict(c.bad), c.scored) for s, c in self.splits.items()}
        every: list = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        merged: dict[str, SplitCount] = {}
        for part in every:
            for split, (size, bad, scored) in part.items():
                count = merged.setdefault(split, SplitCount(size=size))
                count.bad.update(bad)
                count.scored += scored
        for split, count in merged.items():
            # A DistributedSampler pads the last batch with repeated samples: never more than the split.
            count.scored = min(count.scored, count.size) if count.size else count.scored
        self._merged = merged

    def on_train_end(self, trainer, pl_module) -> None:
        self._gather()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._gather()

    def on_test_end(self, trainer, pl_module) -> None:
        self._gather()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.observe(batch, "train", trainer)
        pl_module.log("data/skipped_videos", float(self.skipped), batch_size=1)

    def _start_eval(self, trainer, split: str) -> None:
        if not trainer.sanity_checking:
            self.splits.setdefault(split, SplitCount()).scored = 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start_eval(trainer, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start_eval(trainer, "test")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.observe(batch, "val", trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.observe(batch, "test", trainer)


class ReseedOnSetup(L.Callback):
    """Re-seed the process from ``seed`` when a fit/validate/test sets up, before any checkpoint is restored.

    Lightning already re-seeds every DDP/FSDP rank when it joins the process group, which is after the model was
    built; doing the same on a single process makes 1- and N-process runs start from the same RNG state (GRPO
    rollouts sample from it). A resumed run then replaces it with the checkpoint's saved RNG state.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def setup(self, trainer, pl_module, stage: str) -> None:
        L.seed_everything(self.seed, workers=True, verbose=False)
