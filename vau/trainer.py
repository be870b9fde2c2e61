"""The Lightning Trainer of a run: strategy, callbacks, checkpointing and logger from the composed config."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from omegaconf import DictConfig, OmegaConf

from vau.callbacks import (
    BadVideoMonitor,
    LogLastStep,
    ModelSize,
    ProgressLog,
    ReseedOnSetup,
    ScoreReportLogger,
    VauProgressBar,
)
from vau.checkpoints import AtomicCheckpointIO
from vau.config import ConfigError
from vau.eval.writer import PredictionWriter
from vau.modules.parallel import FSDP2Strategy
from vau.modules.parallel import build_strategy as make_strategy
from vau.registry import ALGORITHMS


def build_strategy(cfg: DictConfig, spec):
    """``trainer.strategy`` -> a Lightning strategy (see :mod:`vau.modules.parallel`), checked against the config."""
    try:
        strategy = make_strategy(spec)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if isinstance(strategy, FSDP2Strategy) and cfg.backbone.get("quantization"):
        raise ConfigError(f"backbone.quantization={cfg.backbone.quantization} with trainer=fsdp: 4-bit weights are "
                          f"not sharded by vau's FSDP2 setup; use trainer=ddp for multi-GPU QLoRA (each GPU holds "
                          f"the 4-bit model), or backbone.quantization=null with lora.enabled=true under FSDP2")
    return strategy


def build_trainer(cfg: DictConfig, run_dir: Path, algorithm=None, stage: str = "fit", callbacks=()) -> L.Trainer:
    """The Trainer of a stage. ``fit`` / ``validate`` / ``test``: writing to ``run_dir`` (checkpoints, TensorBoard,
    vau's callbacks), the training algorithm (default: ``module.name``'s class) adjusting the ``trainer`` arguments.
    ``predict``: one device, no logger and no checkpoints, ``callbacks`` (the record writer) only. The other stages
    write their test records through a :class:`vau.eval.writer.PredictionWriter` of their own
    (``<run_dir>/predictions_rank<R>.jsonl``) unless ``callbacks`` brings one."""
    if stage == "predict":
        return L.Trainer(accelerator=str(cfg.trainer.get("accelerator", "auto")), devices=1,
                         precision=cfg.trainer.get("precision", "32-true"), logger=False, enable_checkpointing=False,
                         callbacks=list(callbacks), enable_model_summary=False,
                         enable_progress_bar=bool(cfg.trainer.get("enable_progress_bar", True)))

    algorithm = algorithm or ALGORITHMS.get(cfg.module.name)
    kwargs = algorithm.trainer_kwargs(OmegaConf.to_container(cfg.trainer, resolve=True))
    strategy = build_strategy(cfg, kwargs.pop("strategy", "auto"))
    extra = list(callbacks)
    writer = next((c for c in extra if isinstance(c, PredictionWriter)), None) or PredictionWriter(
        run_dir / "predictions_rank{rank}.jsonl")
    ckpt = cfg.get("checkpoint") or {}
    every = ckpt.get("every_n_train_steps")
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step}", save_last=True,
                        save_top_k=int(ckpt.get("save_top_k", 1)), every_n_train_steps=int(every) if every else None,
                        auto_insert_metric_name=False),
        BadVideoMonitor(cfg.data.get("max_bad_fraction", 0.01)),
        ReseedOnSetup(int(cfg.seed)),
        ProgressLog(),  # a line per epoch in the log, which reaches a file when the output is redirected
        LogLastStep(),
        writer,  # test records -> predictions_rank<R>.jsonl; before the score report, which reads them
        ScoreReportLogger(writer),  # the score report (confusion matrix, IoU histogram, per-source table) in TensorBoard
    ]
    if kwargs.get("enable_progress_bar", True) and _RICH_AVAILABLE:
        callbacks.append(VauProgressBar())
    if kwargs.get("enable_model_summary", True):
        callbacks.append(ModelSize())
    callbacks.extend(c for c in extra if c is not writer)
    plugins = list(kwargs.pop("plugins", None) or [])
    if not getattr(strategy, "_save_distributed_checkpoint", False):  # FSDP2 folders are written by torch DCP
        plugins.append(AtomicCheckpointIO())
    unknown = sorted(set(kwargs) - set(inspect.signature(L.Trainer.__init__).parameters))
    if unknown:  # a key added with +trainer.KEY=...: name it rather than let Lightning raise a TypeError
        raise ConfigError(f"trainer.{unknown[0]}: not an argument of Lightning's Trainer "
                          f"(https://lightning.ai/docs/pytorch/stable/common/trainer.html); remove it")
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    return L.Trainer(default_root_dir=str(run_dir), logger=logger, callbacks=callbacks, strategy=strategy,
                     plugins=plugins, **kwargs)
