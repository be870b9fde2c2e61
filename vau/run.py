"""One run, as a recipe: config -> backbone, DataModule, training algorithm, Trainer -> fit/validate/test -> table.

The parts live where they belong: the run folder in :mod:`vau.run_dir`, checkpoint files in :mod:`vau.checkpoints`,
the Trainer (strategy, callbacks) in :mod:`vau.trainer`, and everything an algorithm needs from the config in its
own :meth:`~vau.modules.base.VAUModule.from_config`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from vau.checkpoints import load_init_weights, resolve_ckpt
from vau.modules.optim import check_master_weights
from vau.registry import ALGORITHMS
from vau.run_dir import make_run_dir
from vau.trainer import build_trainer

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig, backbone, run_dir: Path):
    """The training algorithm named by ``module.name`` (:data:`vau.registry.ALGORITHMS`), built from config."""
    module = ALGORITHMS.get(cfg.module.name).from_config(cfg, backbone, run_dir)
    load_init_weights(module, cfg)
    check_master_weights(module.model.named_parameters())  # before any work: bf16 weights would lose updates
    return module


def format_table(metrics: dict[str, float], title: str) -> str:
    rows = [(k, v) for k, v in sorted(metrics.items())]
    width = max([len(k) for k, _ in rows] + [len("metric")])
    lines = [title, f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for key, value in rows:
        shown = "nan" if math.isnan(value) else f"{value:.4f}"
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def run(stage: str, cfg: DictConfig) -> dict[str, float]:
    """Run ``stage`` (fit | validate | test) for a composed config; returns the final metrics."""
    from vau.datamodules.vau_bench import VAUBenchDataModule
    from vau.modules.backbones import build_backbone

    started = time.perf_counter()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    algorithm = ALGORITHMS.get(cfg.module.name)  # an unknown name fails before any work
    run_dir = make_run_dir(cfg)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info("run directory: %s", run_dir)
    backbone = build_backbone(cfg.backbone, lora=cfg.get("lora"))
    datamodule = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, seed=int(cfg.seed),
                                    with_target=algorithm.needs_targets)
    module = build_module(cfg, backbone, run_dir)
    trainer = build_trainer(cfg, run_dir, algorithm)
    ckpt = resolve_ckpt(cfg)
    if stage == "fit":
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        if cfg.get("test_after_fit", True):
            best = trainer.checkpoint_callback.best_model_path or None
            trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False)
    elif stage == "validate":
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
    elif stage == "test":
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.split("/")[0] in ("val", "test")}
    minutes = (time.perf_counter() - started) / 60
    if trainer.is_global_zero:
        print(format_table(metrics, f"\n{cfg.experiment_name}: {stage} finished in {minutes:.1f} min -> {run_dir}"))
    return metrics
