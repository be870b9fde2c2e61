"""One run: config -> backbone, DataModule, LightningModule, Trainer -> fit/validate/test -> metrics table."""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import datetime
from pathlib import Path

import lightning as L
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from vau.callbacks import BadVideoMonitor
from vau.config import ConfigError

log = logging.getLogger(__name__)
MODULES = ("sft", "grpo")


RUN_DIR_ENV = "VAU_RUN_DIR"


def make_run_dir(cfg: DictConfig) -> Path:
    """``run_dir``, or ``output_dir/experiment_name/<timestamp>``; the same folder on every rank of a job.

    Lightning starts ranks 1..N-1 of a single-node job by re-running the command, seconds later: they take rank
    0's folder from the environment. Under SLURM / torchrun (processes started outside vau) the folder is named
    after the job id; without one, pass ``run_dir=`` explicitly.
    """
    inherited = os.environ.get(RUN_DIR_ENV) if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 else None
    if cfg.get("run_dir"):
        path = Path(cfg.run_dir)
    elif inherited:
        path = Path(inherited)
    else:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        if int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1) > 1:
            # Ranks started by srun / torchrun: a clock reading may differ between them, the job id does not.
            job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID", "none")
            if job and job != "none":
                stamp = f"job{job}"
            else:
                log.warning("ranks started outside vau without a job id may pick different run folders: "
                            "pass run_dir=... (or torchrun --rdzv-id)")
        path = Path(cfg.paths.output_dir) / cfg.experiment_name / stamp
    path.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(path)  # inherited by the ranks Lightning launches from this process
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
    module.adapter_only_checkpoint = bool((cfg.get("checkpoint") or {}).get("adapter_only", True))
    load_init_weights(module, cfg)
    return module


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file next to it, fsyncs, then renames it into place.

    A run killed mid-write (SIGKILL, preemption, OOM) leaves the previous ``last.ckpt`` intact, never a torn file.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import tempfile

        import torch

        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


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


def build_strategy(cfg: DictConfig, spec):
    """``trainer.strategy`` -> a Lightning strategy (see :mod:`vau.modules.parallel`), checked against the config."""
    from vau.modules.parallel import FSDP2Strategy
    from vau.modules.parallel import build_strategy as make

    try:
        strategy = make(spec)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if isinstance(strategy, FSDP2Strategy) and cfg.backbone.get("quantization"):
        raise ConfigError(f"backbone.quantization={cfg.backbone.quantization} with trainer=fsdp: 4-bit weights are "
                          f"not sharded by vau's FSDP2 setup; use trainer=ddp for multi-GPU QLoRA (each GPU holds "
                          f"the 4-bit model), or backbone.quantization=null with lora.enabled=true under FSDP2")
    return strategy


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if cfg.module.name == "grpo":
        # GRPO steps its optimiser itself (several updates per rollout): it clips with this value instead.
        kwargs.pop("gradient_clip_val", None)
        if kwargs.get("accumulate_grad_batches", 1) != 1:
            raise ConfigError("module=grpo: trainer.accumulate_grad_batches must be 1; raise data.batch_size or "
                              "module.grpo.num_generations for larger rollouts")
    strategy = build_strategy(cfg, kwargs.pop("strategy", "auto"))
    ckpt = cfg.get("checkpoint") or {}
    every = ckpt.get("every_n_train_steps")
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step}", save_last=True,
                        save_top_k=int(ckpt.get("save_top_k", 1)), every_n_train_steps=int(every) if every else None,
                        auto_insert_metric_name=False),
        BadVideoMonitor(cfg.data.get("max_bad_fraction", 0.01)),
        ReseedOnSetup(int(cfg.seed)),
    ]
    plugins = list(kwargs.pop("plugins", None) or [])
    if not getattr(strategy, "_save_distributed_checkpoint", False):  # FSDP2 folders are written by torch DCP
        plugins.append(AtomicCheckpointIO())
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    return L.Trainer(default_root_dir=str(run_dir), logger=logger, callbacks=callbacks, strategy=strategy,
                     plugins=plugins, **kwargs)


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
    backbone = build_backbone(cfg.backbone, lora=cfg.get("lora"))
    datamodule = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, seed=int(cfg.seed),
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
