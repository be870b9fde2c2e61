"""Lightning callbacks vau adds to every run."""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger(__name__)


class BadVideoError(RuntimeError):
    pass


class BadVideoMonitor(L.Callback):
    """Counts unusable videos the loaders skipped, warns once per file, and stops the run past a fraction.

    A corrupt clip among thousands is survivable, a broken video folder is not: the run fails once skipped /
    seen exceeds ``max_bad_fraction`` (config key ``data.max_bad_fraction``), after ``min_seen`` examples.
    """

    def __init__(self, max_bad_fraction: float = 0.01, min_seen: int = 20) -> None:
        self.max_bad_fraction = float(max_bad_fraction)
        self.min_seen = int(min_seen)
        self.seen = 0
        self.skipped = 0
        self.warned: set[str] = set()

    def observe(self, batch) -> None:
        bad = batch.get("bad", []) if isinstance(batch, dict) else []
        self.seen += batch.get("size", 0) + len(bad) if isinstance(batch, dict) else 0
        self.skipped += len(bad)
        for item in bad:
            if item["video"] not in self.warned:
                self.warned.add(item["video"])
                log.warning("skipping unusable video (%d skipped so far): %s", self.skipped, item["error"])
        if self.seen >= self.min_seen and self.skipped > self.max_bad_fraction * self.seen:
            raise BadVideoError(
                f"{self.skipped} of {self.seen} videos were unusable ({self.skipped / self.seen:.1%} > "
                f"data.max_bad_fraction={self.max_bad_fraction}). First ones: {sorted(self.warned)[:5]}. "
                f"Run `python -m vau data check` on the video folder, or raise data.max_bad_fraction."
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.observe(batch)
        pl_module.log("data/skipped_videos", float(self.skipped), batch_size=1)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.observe(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.observe(batch)


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
