"""One run: config -> backbone, DataModule, LightningModule, Trainer -> fit/validate/test -> metrics table."""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from vau.callbacks import BadVideoMonitor
from vau.config import ConfigError

log = logging.getLogger(__name__)
MODULES = ("sft",)


def make_run_dir(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        path = Path(cfg.run_dir)
    else:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        path = Path(cfg.paths.output_dir) / cfg.experiment_name / stamp
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_ckpt(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt != "last":
        return ckpt
    runs = sorted((Path(cfg.paths.output_dir) / cfg.experiment_name).glob("*/checkpoints/last.ckpt"))
    if not runs:
        raise ConfigError(f"ckpt_path=last: no checkpoints/last.ckpt under {cfg.paths.output_dir}/{cfg.experiment_name}")
    return str(runs[-1])


def build_module(cfg: DictConfig, backbone, run_dir: Path):
    name = cfg.module.name
    if name == "sft":
        from vau.modules.sft import SFTModule

        return SFTModule(backbone, cfg.module.optim, cfg.data.task, cfg.module.get("generation"),
                         predictions_dir=str(run_dir))
    raise ConfigError(f"module.name={name!r} is not one of {', '.join(MODULES)}")


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step}", save_last=True, save_top_k=1,
                        auto_insert_metric_name=False),
        BadVideoMonitor(cfg.data.get("max_bad_fraction", 0.01)),
    ]
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    return L.Trainer(default_root_dir=str(run_dir), logger=logger, callbacks=callbacks, **kwargs)


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
    run_dir = make_run_dir(cfg)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info("run directory: %s", run_dir)
    backbone = build_backbone(cfg.backbone)
    datamodule = VAUBenchDataModule(cfg.data, cfg.sampler, backbone.processor, backbone.pad_id, seed=int(cfg.seed),
                                    with_target=True)
    module = build_module(cfg, backbone, run_dir)
    trainer = build_trainer(cfg, run_dir)
    ckpt = resolve_ckpt(cfg)
    metrics: dict[str, float] = {}
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
