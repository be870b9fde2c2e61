"""The one writer of prediction records: what ``test`` and ``predict`` write goes through :class:`PredictionWriter`.

The module's ``test_step`` and ``predict_step`` return one record per reply
(:meth:`vau.modules.base.VAUModule.prediction_records`: video, task, raw reply, parsed prediction, frame times; the
format of docs/predict.md); this callback writes them, so ``score``, ``judge``, the HTML report and the TensorBoard
score report (:class:`vau.callbacks.ScoreReportLogger`, which reads :attr:`PredictionWriter.records`) all read one
format from one writer.

- ``test`` (``fit``'s last stage, or ``python -m vau test``): the epoch's records go to
  ``<run_dir>/predictions_rank<R>.jsonl``, one file per rank, rewritten by each test epoch.
- ``predict``: each batch's records are appended to ``out`` as the batch completes, so a killed run keeps what it
  had and resumes (``vau.predict``); a record may carry the run's identity (weights, config).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L

from vau.outputs import cut_torn_line

log = logging.getLogger(__name__)

RANK_FIELD = "{rank}"


class PredictionWriter(L.Callback):
    """Writes the records the module returns from its test and predict steps.

    Args:
        path: the JSON-lines file; ``{rank}`` in it is replaced by the process's global rank (test: every rank writes
            its own file, ``score`` reads them as a glob).
        identity: added to every record as ``run`` (``predict``: which weights and config wrote it).

    Example::

        writer = PredictionWriter(run_dir / "predictions_rank{rank}.jsonl")
        trainer = build_trainer(cfg, run_dir, stage="test", callbacks=[writer])
    """

    def __init__(self, path: str | Path, identity: dict[str, str] | None = None) -> None:
        self.path = str(path)
        self.identity = identity
        self.records: list[dict[str, Any]] = []  # this test epoch's records (the score report reads them)
        self.written = 0  # records written by predict
        self.unreadable: list[dict[str, Any]] = []  # videos the loader could not read (predict lists them)
        self._tail_checked = False  # the predict file's half-written last line (a killed run's) is cut once

    def file(self, trainer) -> Path:
        return Path(self.path.replace(RANK_FIELD, str(trainer.global_rank)))

    def _tagged(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "run": self.identity} for r in records] if self.identity else list(records)

    # -- test: one file per rank at the end of the epoch --------------------------------------------------------
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.records = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.records += self._tagged(outputs or [])

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        # Callbacks run in list order and the writer comes before the score report, which reads self.records after
        # this: they stay until the next test epoch starts.
        if not self.records:
            return
        path = self.file(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        log.info("wrote %d test predictions to %s", len(self.records), path)

    # -- predict: appended batch by batch -----------------------------------------------------------------------
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for bad in batch.get("bad") or []:
            self.unreadable.append(bad)
            log.warning("unreadable video skipped: %s (%s)", bad.get("video"), bad.get("error"))
        if not outputs:
            return
        path = self.file(trainer)
        if not self._tail_checked:
            # A killed run may have left a half-written last line: cut before the first append (it is predicted again).
            cut_torn_line(path)
            self._tail_checked = True
        with path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in self._tagged(outputs)))
        self.written += len(outputs)
