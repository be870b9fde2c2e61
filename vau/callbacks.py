"""Lightning callbacks vau adds to every run."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

from vau.eval.report import evaluate
from vau.eval.report_plots import log_report
from vau.eval.writer import PredictionWriter

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
        for count in merged.values():
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


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLog(L.Callback):
    """A log line per training epoch: step, training loss/reward, the latest validation metrics, elapsed, ETA.

    The progress bar only draws on a terminal; these lines go through :mod:`logging` (stderr), one at a time,
    so they reach a file when the output is redirected (``python -m vau fit ... > run.log 2>&1``). Within an
    epoch longer than ``every_s`` seconds a line also comes every ``every_s`` seconds, and a run stopped by
    ``trainer.max_steps`` mid-epoch gets a last line.
    """

    def __init__(self, every_s: float = 600.0) -> None:
        self.every_s = float(every_s)
        self.started = self.last = time.monotonic()
        self.epoch_done = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = self.last = time.monotonic()

    def _fraction(self, trainer, batches_done: float) -> float:
        """How much of the run is done: the nearer of the step and the epoch limits."""
        parts = []
        if trainer.max_steps and trainer.max_steps > 0:
            parts.append(trainer.global_step / trainer.max_steps)
        total = trainer.num_training_batches
        if trainer.max_epochs and trainer.max_epochs > 0 and total and math.isfinite(total):
            parts.append((trainer.current_epoch + batches_done / total) / trainer.max_epochs)
        return max(parts, default=0.0)

    def _line(self, trainer, what: str, batches_done: float) -> None:
        self.last = time.monotonic()
        if not trainer.is_global_zero:
            return
        elapsed = self.last - self.started
        steps = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        parts = [what, f"step {trainer.global_step}{steps}"]
        metrics = trainer.callback_metrics
        for key in ("train/loss", "train/reward"):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.4f}")
        parts += [f"{k} {float(v):.4f}" for k, v in sorted(metrics.items())
                  if k.startswith("val/") and "/reward/" not in k]
        parts.append(f"elapsed {_clock(elapsed)}")
        fraction = self._fraction(trainer, batches_done)
        if 0 < fraction < 1:
            parts.append(f"ETA {_clock(elapsed * (1 - fraction) / fraction)}")
        log.info(", ".join(parts))

    def _epoch(self, trainer) -> str:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{total}"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self.last >= self.every_s:
            self._line(trainer, f"{self._epoch(trainer)} in progress", batch_idx + 1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_done = True
        self._line(trainer, f"{self._epoch(trainer)} done", trainer.num_training_batches)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.epoch_done:  # stopped by max_steps inside an epoch
            self._line(trainer, f"training done in {self._epoch(trainer)}", 0)


class LogLastStep(L.Callback):
    """Send the last training step's scalars to the loggers even when its number is not a multiple of
    ``trainer.log_every_n_steps`` (otherwise a 5-step run with the default of 10 logs no training scalar)."""

    @staticmethod
    def _is_last(trainer, batch_idx: int) -> bool:
        if trainer.max_steps and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            return True
        last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
        return last_epoch and batch_idx + 1 >= trainer.num_training_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        connector = getattr(trainer, "_logger_connector", None)  # what Lightning logs step scalars through
        if connector is None or not trainer.loggers or connector.should_update_logs:
            return  # Lightning logs this step itself
        if self._is_last(trainer, batch_idx):
            connector.log_metrics(connector.metrics["log"])


class ModelSize(ModelSummary):
    """Lightning's model summary without its FLOPs column and ``Total FLOPs: 0`` line (vau never measures
    FLOPs, so they always read 0), as one log message."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes, total_flops: int = 0, **kwargs) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        widths = [max([len(name), *(len(str(v)) for v in values)]) for name, values in columns]
        rows = [list(zip(*(values for _, values in columns)))]
        lines = ["  " + "  ".join(f"{name:<{w}}" for (name, _), w in zip(columns, widths))]
        lines += ["  " + "  ".join(f"{str(v):<{w}}" for v, w in zip(row, widths)) for row in rows[0]]
        log.info("model: %s parameters, %s trainable, %.1f MB\n%s", get_human_readable_count(total_parameters),
                 get_human_readable_count(trainable_parameters), model_size, "\n".join(lines))


class VauProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled ``Epoch N`` when the run is bounded by steps alone
    (``trainer.max_epochs=-1``), where Lightning's own label reads ``Epoch 0/-2``."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        description = f"Epoch {current_epoch}"
        if max_epochs is not None and max_epochs > 0:
            description += f"/{max_epochs - 1}"
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"
        return description


class ScoreReportLogger(L.Callback):
    """At the end of the test stage, log the evaluation report of ``python -m vau score`` to TensorBoard: the CLS
    confusion matrix (figure), the TAG IoU histogram (histogram and figure), per-source scalars and the tables.

    It reads the records the prediction writer wrote (:attr:`vau.eval.writer.PredictionWriter.records`, the lines of
    ``predictions_rank*.jsonl``) and the samples of the test batches, and scores them with
    :func:`vau.eval.report.evaluate`, the function ``score`` uses. Under DDP every rank's samples and records are
    gathered (``all_gather_object``) and rank 0 alone writes. Lightning runs callbacks' ``on_test_epoch_end`` in
    list order: the writer's comes first (vau.trainer).
    """

    def __init__(self, writer: PredictionWriter) -> None:
        self.writer = writer
        self.samples: list = []
        self.report: dict | None = None  # the last report logged (rank 0)
        self.tags: list[str] = []  # the TensorBoard tags it wrote

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.samples = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(batch, dict):
            self.samples += list(batch.get("samples") or [])

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        records = list(self.writer.records)
        samples = self.samples
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            every: list = [None] * dist.get_world_size()
            dist.all_gather_object(every, (samples, records))
            samples = [s for part, _ in every for s in part]
            records = [r for _, part in every for r in part]
        if not trainer.is_global_zero or not samples:
            return
        writer = _tensorboard(trainer)
        if writer is None:
            return
        self.report = evaluate(samples, records)
        self.tags = log_report(writer, self.report, trainer.global_step)
        log.info("test report logged to TensorBoard (%d tags)", len(self.tags))


def _tensorboard(trainer):
    """The SummaryWriter of the trainer's TensorBoard logger, or None without one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
