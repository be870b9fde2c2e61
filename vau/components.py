"""The components of a run, built from its config the same way for every stage: ``fit``, ``validate``, ``test``
(:mod:`vau.run`) and ``predict`` (:mod:`vau.predict`).

Example::

    with run_settings(cfg):
        backbone, datamodule, module = build_components(cfg, run_dir)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from vau.backbones.base import build_backbone
from vau.checkpoints import load_init_weights
from vau.datamodules.vau_bench import VAUBenchDataModule
from vau.modules.optim import check_master_weights
from vau.registry import ALGORITHMS, load_plugins


@contextmanager
def run_settings(cfg: DictConfig) -> Iterator[None]:
    """The process-wide settings of a run: seeds from ``seed``, ``torch_threads``; the thread count is put back when
    the run ends (tests, notebooks and a second run in the same process see it as it was)."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    threads = torch.get_num_threads()
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_module(cfg: DictConfig, backbone, run_dir: Path, init_key: str = "init_from"):
    """The training algorithm named by ``module.name`` (:data:`vau.registry.ALGORITHMS`), built from config, with the
    weights of ``init_from`` (``init_key`` names that setting in messages: ``predict`` calls it ``ckpt``)."""
    module = ALGORITHMS.get(cfg.module.name).from_config(cfg, backbone, run_dir)
    load_init_weights(module, cfg, key=init_key)
    check_master_weights(module.model.named_parameters())  # before any work: bf16 weights would lose updates
    return module


def build_components(cfg: DictConfig, run_dir: Path, with_target: bool | None = None, init_key: str = "init_from"):
    """``(backbone, datamodule, module)`` of a run: the backbone (with LoRA/QLoRA), the DataModule over the
    annotation files and the training module. ``with_target`` (default: what the algorithm needs) says whether
    samples carry their target text. The plugin modules the config lists (``plugins``) are imported first, so a run
    built from Python (``vau.run.run``) finds its plugin components as the command line does."""
    load_plugins(cfg.get("plugins") or [])
    algorithm = ALGORITHMS.get(cfg.module.name)
    backbone = build_backbone(cfg.backbone, lora=cfg.get("lora"))
    generation = cfg.module.get("generation") or {}
    datamodule = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, seed=int(cfg.seed),
                                    with_target=algorithm.needs_targets if with_target is None else with_target,
                                    look_instruction=bool(generation.get("look_again", False)),
                                    look_frames=int(generation.get("look_frames", 8)))
    module = build_module(cfg, backbone, run_dir, init_key)
    return backbone, datamodule, module
