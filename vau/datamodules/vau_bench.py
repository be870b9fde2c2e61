"""LightningDataModule over VAU-Bench-format annotation files (the real benchmark or the generated demo)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from vau.datamodules.annotations import read_annotations
from vau.datamodules.dataset import VideoResolver, VideoTaskDataset
from vau.datamodules.encoding import Collator, SampleEncoder
from vau.datamodules.samplers import build_sampler
from vau.tasks import Sample, get_task

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def load_samples(annotations: str | Path, task: str, resolver: VideoResolver | None = None,
                 limit: int | None = None) -> list[Sample]:
    """The samples ``task`` keeps from one annotation file, with resolved video paths."""
    spec = get_task(task)
    rows = [a for a in read_annotations(annotations) if spec.keep(a)]
    if limit is not None:
        rows = rows[: int(limit)]
    return [spec.sample(a, str(resolver(a.video, a.source)) if resolver else "") for a in rows]


class VAUBenchDataModule(L.LightningDataModule):
    """Train/val/test loaders for one task over VAU-Bench-format CSVs.

    Args:
        cfg: the ``data`` config node: ``annotations.{train,val,test}``, ``video_root``, ``video_roots``,
            ``task``, ``batch_size``, ``eval_batch_size``, ``num_workers``, ``limit``, and optionally ``generate``.
        sampler_cfg: the ``sampler`` config node (name + kwargs); ``eval_sampler_cfg`` overrides it for val/test.
        processor: the backbone's processor.
        pad_id: the tokenizer's padding id.
        seed: seeds the shuffling order and random frame samplers.
        with_target: include target text (SFT) or prompts only (GRPO).
    """

    def __init__(self, cfg, sampler_cfg, processor, pad_id: int, seed: int = 0, with_target: bool = True,
                 system_prompt: str | None = None, eval_sampler_cfg=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.sampler = build_sampler(sampler_cfg)
        self.eval_sampler = build_sampler(eval_sampler_cfg) if eval_sampler_cfg else self.sampler
        self.encoder = SampleEncoder(processor, get_task(cfg.task), system_prompt=system_prompt)
        self.collate = Collator(pad_id)
        self.seed = seed
        self.with_target = with_target
        self.datasets: dict[str, VideoTaskDataset] = {}

    def prepare_data(self) -> None:
        gen = self.cfg.get("generate")
        if gen:
            from vau.datamodules.synthetic import generate

            generate(self.cfg.root, **dict(gen))

    def _dataset(self, split: str) -> VideoTaskDataset | None:
        path = (self.cfg.get("annotations") or {}).get(split)
        if not path:
            return None
        if split not in self.datasets:
            resolver = VideoResolver(self.cfg.get("video_root"), dict(self.cfg.get("video_roots") or {}))
            limit = (self.cfg.get("limit") or {}).get(split)
            samples = load_samples(path, self.cfg.task, resolver, limit)
            if not samples:
                raise ValueError(f"{path}: no rows usable for task {self.cfg.task!r} (config key data.annotations.{split})")
            log.info("%s: %d %s samples from %s", split, len(samples), self.cfg.task, path)
            train = split == "train"
            self.datasets[split] = VideoTaskDataset(
                samples, self.encoder, self.sampler if train else self.eval_sampler, train=train, seed=self.seed,
                with_target=self.with_target,
            )
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self._dataset(split)

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        dataset = self._dataset(split)
        if dataset is None:
            raise ValueError(f"no {split} annotations: set data.annotations.{split}")
        generator = torch.Generator().manual_seed(self.seed)
        workers = int(self.cfg.get("num_workers", 0))
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers,
            collate_fn=self.collate, persistent_workers=workers > 0, drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, int(self.cfg.batch_size))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, int(self.cfg.get("eval_batch_size") or self.cfg.batch_size))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, int(self.cfg.get("eval_batch_size") or self.cfg.batch_size))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}
