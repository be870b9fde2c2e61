"""One run, as a recipe: config -> backbone, DataModule, training algorithm, Trainer -> fit/validate/test -> table.

The parts live where they belong: the run folder in :mod:`vau.run_dir`, checkpoint files in :mod:`vau.checkpoints`,
the Trainer (strategy, callbacks) in :mod:`vau.trainer`, and everything an algorithm needs from the config in its
own :meth:`~vau.modules.base.VAUModule.from_config`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vau.callbacks import BadVideoMonitor
from vau.checkpoints import check_weights_fit, ensure_writable, read_checkpoint, resolve_ckpt
from vau.components import build_components, run_settings
from vau.config import ConfigError
from vau.registry import ALGORITHMS
from vau.run_dir import make_run_dir
from vau.trainer import build_trainer

log = logging.getLogger(__name__)


SHOW = 5  # unreadable clip names listed per split


def _names(names: list[str]) -> str:
    shown = [Path(n).name for n in names[:SHOW]]
    return ", ".join(shown) + (f", ... ({len(names) - SHOW} more)" if len(names) > SHOW else "")


def data_report(splits: dict, eval_split: str | None) -> tuple[dict[str, float], list[str]]:
    """The coverage metric of the final evaluation and the lines the table prints under its metrics.

    Args:
        splits: :meth:`vau.callbacks.BadVideoMonitor.summary` (split -> size, unusable clips, clips scored).
        eval_split: the split the table's metrics were computed on (``val`` or ``test``), if any.

    Coverage is what ``python -m vau score`` calls "annotation rows predicted": clips that got a reply over the
    split's samples. The metrics above it are over the predicted clips only; ``score`` counts the others wrong.
    """
    metrics: dict[str, float] = {}
    lines: list[str] = []
    count = splits.get(eval_split) if eval_split else None
    if count is not None and count.size:
        metrics[f"{eval_split}/coverage"] = count.scored / count.size
        line = (f"{eval_split}/coverage: {count.scored} of {count.size} {eval_split} samples predicted; the metrics "
                f"above are over those {count.scored}")
        videos = count.videos()
        if videos:
            line += (f"; {len(videos)} unreadable clip(s) got no prediction (`python -m vau score` counts them "
                     f"wrong): {_names(videos)}")
        lines.append(line)
    skipped = [f"{split} {len(c.bad)} of {c.size if c.size else '?'}" for split, c in splits.items()]
    if skipped:
        lines.append("skipped (unusable) clips per split: " + ", ".join(skipped))
    return metrics, lines


def _headline_first(key: str) -> tuple[int, str]:
    # Circular accuracy first: raw QA accuracy can be earned by a letter shortcut (docs/scoring.md).
    return (0 if key.endswith("circular_accuracy") else 1, key)


def format_table(metrics: dict[str, float], title: str, notes: list[str] = ()) -> str:
    rows = sorted(metrics.items(), key=lambda item: _headline_first(item[0]))
    width = max([len(k) for k, _ in rows] + [len("metric")])
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for key, value in rows:
        shown = "nan" if math.isnan(value) else f"{value:.4f}"
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join([*lines, *notes])


def run(stage: str, cfg: DictConfig) -> dict[str, float]:
    """Run ``stage`` (fit | validate | test) for a composed config; returns the final metrics.

    A run that fails before writing anything but its config.yaml leaves no folder behind.
    """
    started = time.perf_counter()
    with run_settings(cfg):
        algorithm = ALGORITHMS.get(cfg.module.name)  # an unknown name fails before any work
        check_run_dir(stage, cfg)
        existed = bool(cfg.get("run_dir")) and Path(cfg.run_dir).exists()
        run_dir = make_run_dir(cfg)
        try:
            return _run(stage, cfg, run_dir, algorithm, started)
        except BaseException:
            if not existed:
                remove_unused_run_dir(run_dir, auto_named=not cfg.get("run_dir"))
            raise


def check_run_dir(stage: str, cfg: DictConfig) -> None:
    """An explicit ``run_dir`` that already holds a run is refused, unless this is ``fit`` resuming from a checkpoint
    inside it: a new run there would overwrite its config.yaml and mix two runs' checkpoints and TensorBoard files.
    Checked by the first process only (the other ranks of a job find the folder rank 0 just started)."""
    if not cfg.get("run_dir") or any(int(os.environ.get(k, "0") or 0) > 0 for k in ("LOCAL_RANK", "RANK")):
        return
    path = Path(cfg.run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run_dir={path} is a file; give a folder (or leave run_dir empty for "
                          f"{cfg.paths.output_dir}/{cfg.experiment_name}/<time>)")
    if not path.is_dir() or not any(path.iterdir()):
        return
    ckpt = resolve_ckpt(cfg) if stage == "fit" else None
    if ckpt and Path(os.path.realpath(ckpt)).is_relative_to(Path(os.path.realpath(path))):
        return
    held = ", ".join(sorted(p.name for p in path.iterdir())[:4])
    resume = path / "checkpoints" / "last.ckpt"
    raise ConfigError(f"run_dir={path} already holds a run ({held}): a new {stage} there would overwrite its "
                      f"config.yaml and mix two runs' files. Resume it with `python -m vau fit ckpt_path={resume} "
                      f"run_dir={path}`, or choose another run_dir (or none: {cfg.paths.output_dir}/"
                      f"{cfg.experiment_name}/<time>)")


def remove_unused_run_dir(run_dir: Path, auto_named: bool) -> None:
    """Delete the folder of a failed run when nothing but its own config.yaml was written into it.

    A run that fails while starting (a missing ``init_from``, a bad path) would otherwise leave an empty timestamped
    folder that ``ckpt_path=last`` and people browsing ``outputs/`` trip over. Folders with any other file (logs,
    checkpoints, predictions) are kept. Only the first process of a node does this.
    """
    if int(os.environ.get("LOCAL_RANK", "0") or 0) != 0 or not run_dir.is_dir():
        return
    written = [p for p in run_dir.rglob("*") if not p.is_dir() and p != run_dir / "config.yaml"]
    if written:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("removed the folder of the failed run, nothing was written into it: %s", run_dir)
    if auto_named:
        try:
            run_dir.parent.rmdir()  # outputs/<experiment>/ when this was its only run
        except OSError:
            pass


def _run(stage: str, cfg: DictConfig, run_dir: Path, algorithm, started: float) -> dict[str, float]:
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info("run directory: %s", run_dir)
    if stage == "fit":
        ensure_writable(run_dir / "checkpoints")  # fail now, not at the first save after hours of training
    _, datamodule, module = build_components(cfg, run_dir)
    trainer = build_trainer(cfg, run_dir, algorithm)
    ckpt = resolve_ckpt(cfg)
    if ckpt:  # a broken file or another backbone's weights: one line naming it, before Lightning tries
        check_weights_fit(module.model, read_checkpoint(ckpt, "ckpt_path")["state_dict"], ckpt, "ckpt_path")
    if stage == "fit":
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        if cfg.get("test_after_fit", True):
            best = trainer.checkpoint_callback.best_model_path or None
            trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True)
    elif stage == "validate":
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    elif stage == "test":
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.split("/")[0] in ("val", "test")}
    monitor = next((c for c in trainer.callbacks if isinstance(c, BadVideoMonitor)), None)
    eval_split = "test" if stage == "test" or stage == "fit" and cfg.get("test_after_fit", True) else "val"
    coverage, notes = data_report(monitor.summary() if monitor else {}, eval_split)
    metrics.update(coverage)
    minutes = (time.perf_counter() - started) / 60
    if trainer.is_global_zero:
        print(format_table(metrics, f"\n{cfg.experiment_name}: {stage} finished in {minutes:.1f} min -> {run_dir}",
                           notes))
    return metrics
