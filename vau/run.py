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
MODULES = ("sft", "grpo")


def make_run_dir(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        path = Path(cfg.run_dir)
    else:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        path = Path(cfg.paths.output_dir) / cfg.experiment_name / stamp
    path.mkdir(parents=True, exist_ok=True)
    return path


def newest_checkpoint(cfg: DictConfig, experiment: str, key: str) -> str:
    runs = sorted((Path(cfg.paths.output_dir) / experiment).glob("*/checkpoints/last.ckpt"))
    if not runs:
        raise ConfigError(f"{key}: no checkpoints/last.ckpt under {cfg.paths.output_dir}/{experiment}; "
                          f"run that experiment first or give a checkpoint path")
    return str(runs[-1])


def resolve_ckpt(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("ckpt_path")
    return newest_checkpoint(cfg, cfg.experiment_name, "ckpt_path=last") if ckpt == "last" else ckpt


def load_init_weights(module, cfg: DictConfig) -> None:
    """``init_from``: start from the model weights of a checkpoint file, or of an experiment's newest run."""
    import torch

    source = cfg.get("init_from")
    if not source:
        return
    path = source if Path(source).is_file() else newest_checkpoint(cfg, source, f"init_from={source}")
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = module.model.load_state_dict(weights, strict=False)
    if unexpected or len(missing) == len(weights):
        raise ConfigError(f"init_from={source}: {path} does not hold weights of this backbone "
                          f"({len(unexpected)} unexpected, {len(missing)} missing keys)")
    log.info("initialised model weights from %s", path)


def build_module(cfg: DictConfig, backbone, run_dir: Path):
    from vau.rewards import build_rewards

    name = cfg.module.name
    rewards = build_rewards(cfg.get("reward"))
    common = {"optim": cfg.module.optim, "task": cfg.data.task, "generation": cfg.module.get("generation"),
              "predictions_dir": str(run_dir)}
    if name == "sft":
        from vau.modules.sft import SFTModule

        module = SFTModule(backbone, rewards=rewards, **common)
    elif name == "grpo":
        from vau.modules.grpo import GRPOModule

        module = GRPOModule(backbone, rewards=rewards, grpo=cfg.module.get("grpo"),
                            max_grad_norm=cfg.trainer.get("gradient_clip_val"), **common)
    else:
        raise ConfigError(f"module.name={name!r} is not one of {', '.join(MODULES)}")
    load_init_weights(module, cfg)
    return module


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if cfg.module.name == "grpo":
        # GRPO steps its optimiser itself (several updates per rollout): it clips with this value instead.
        kwargs.pop("gradient_clip_val", None)
        if kwargs.get("accumulate_grad_batches", 1) != 1:
            raise ConfigError("module=grpo: trainer.accumulate_grad_batches must be 1; raise data.batch_size or "
                              "module.grpo.num_generations for larger rollouts")
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
                                    with_target=cfg.module.name == "sft")
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
