"""LightningDataModule over VAU-Bench-format annotation files (the real benchmark or the generated demo).

Config (the ``data`` node; see conf/data/vau_bench.yaml and docs/data.md):

- ``annotations.{train,val,test}``: CSV files; ``video_root`` / ``video_roots.{msad,ucf,ecva}``: video folders.
- ``task``: ``qa`` | ``tag`` | ``cls`` | ``cls_binary`` | ``describe`` | ``mixed`` (with ``mix.weights``,
  ``mix.epoch_size``); ``views``: the TAG normal-clip switches (:mod:`vau.datamodules.views`).
- ``batch_size``, ``eval_batch_size``, ``num_workers``, ``limit.{split}`` (first N samples of each task).
- ``decode_resize`` (default true): resize frames to the backbone's pixel budget at decode time;
  ``decoder`` (``pyav`` | ``decord``; docs/data.md says where they differ); ``decode_threads`` (default 1):
  threads per video; ``frame_cache_dir``: on-disk cache of decoded evaluation clips (null = off).
- ``reflect``: ``{builder: template, seed: ..., corrective_ratio: ...}`` builds reflection chains for the reflect
  tasks of the view in memory (:mod:`vau.datatools.reflection`); null (default) reads chains from the CSV only.
- ``max_bad_fraction``: read by :class:`vau.callbacks.BadVideoMonitor` (see :mod:`vau.datamodules.dataset`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from vau.data.annotations import summarize
from vau.data.readers import read_rows
from vau.data.synthetic import generate
from vau.datamodules.dataset import VideoResolver, VideoTaskDataset
from vau.datamodules.decoders import check_decoder
from vau.datamodules.encoding import Collator, SampleEncoder
from vau.datamodules.loading import EpochSampler
from vau.datamodules.resume import resumable_train_sampler, train_position
from vau.datamodules.samplers import build_sampler
from vau.datamodules.video import FrameCache
from vau.datamodules.views import ViewOptions, build_samples, drop_counts, is_mixed, mix_weights, view_tasks
from vau.datatools.reflection import attach_chains
from vau.qa_position import parse_shifts
from vau.tasks import Sample, get_task
from vau.tasks.base import LOOK_CUE_KEY
from vau.tasks.qa import OPTION_CHECK_KEY, quotes_answer, shift_options

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
OPTION_ORDERS = ("file", "shuffled")
TARGET_LETTERS = ("answer", "random", "random_chain")  # data.qa_target_letter


def keep_pass_band(samples: list[Sample], node, path: str) -> list[Sample]:
    """The training samples whose pass rate in ``data.difficulty.file`` lies in ``data.difficulty.keep`` (both ends
    included); rows the file does not list are kept, and every count is logged."""
    band = [float(x) for x in (node.get("keep") or [0.0, 1.0])]
    if len(band) != 2 or not 0.0 <= band[0] <= band[1] <= 1.0:
        raise ValueError(f"data.difficulty.keep={list(band)}: give [min, max] pass rates with 0 <= min <= max <= 1")
    rates: dict[tuple[str, int, str], float] = {}
    file = Path(str(node.file))
    if not file.is_file():
        raise ValueError(f"data.difficulty.file={file}: no such file; write it with `python -m vau data difficulty`")
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            rates[(str(record["video"]), int(record.get("row") or 0), str(record["task"]))] = float(record["pass_rate"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"data.difficulty.file={file}, line {number}: not a pass-rate record (video, row, task, "
                             f"pass_rate)") from None
    kept, dropped, unlisted = [], 0, 0
    if node.get("curriculum"):  # easy -> hard: falling pass rate, rows without one last (stable: file order in ties)
        samples = sorted(samples, key=lambda s: -rates.get((str(s.video), int(s.row or 0), str(s.task)), -1.0))
    for sample in samples:
        rate = rates.get((str(sample.video), int(sample.row or 0), str(sample.task)))
        if rate is None:
            unlisted += 1
            kept.append(sample)
        elif band[0] <= rate <= band[1]:
            kept.append(sample)
        else:
            dropped += 1
    log.info("train: %d of %d samples of %s kept by pass rate in [%g, %g] (%s); %d dropped, %d not in the file "
             "(kept)", len(kept), len(samples), path, band[0], band[1], file, dropped, unlisted)
    if not kept:
        raise ValueError(f"data.difficulty.keep={band}: no training row of {path} has its pass rate in that band")
    return kept


def with_cues(samples: list[Sample], rows, path: str) -> list[Sample]:
    """``samples`` with the seconds of their clip's cue (the ``Cue Start`` / ``Cue End`` columns of demo data written
    with ``data.generate.cue_seconds``) under :data:`vau.tasks.base.LOOK_CUE_KEY`."""
    cues = {}
    for ann in rows:
        start, end = ann.extra.get("Cue Start"), ann.extra.get("Cue End")
        if start not in (None, "") and end not in (None, ""):
            cues[ann.row] = (float(start), float(end))
    if not cues:
        raise ValueError(f"data.look_chains=true but {path} has no Cue Start / Cue End columns: generate the data with "
                         f"data.generate.cue_seconds (docs/data.md)")
    return [replace(s, extra={**s.extra, LOOK_CUE_KEY: cues[s.row]}) if s.row in cues else s for s in samples]


class VAUBenchDataModule(L.LightningDataModule):
    """Train/val/test loaders for one task view (or the ``mixed`` view) over VAU-Bench-format CSVs.

    Args:
        cfg: the ``data`` config node (see the module doc).
        sampler_cfg: the ``sampler`` config node (name + kwargs); ``eval_sampler_cfg`` overrides it for val/test.
        backbone: the :class:`vau.backbones.base.Backbone` (its processor encodes the samples, and its
            pixel budget drives the decode-time resize).
        pad_id: the padding id of the batches (default: the backbone's).
        seed: seeds the training order and random frame samplers (per epoch, independent of workers).
        with_target: include target text (SFT) or prompts only (GRPO).
        system_prompt: optional system message for every prompt.
        look_instruction: every prompt offers a second look (``module.generation.look_again``).
        look_frames: frames of the window a look shows (``module.generation.look_frames``; SFT of look chains too).
    """

    def __init__(self, cfg, sampler_cfg, backbone, pad_id: int | None = None, seed: int = 0, with_target: bool = True,
                 system_prompt: str | None = None, eval_sampler_cfg=None, look_instruction: bool = False,
                 look_frames: int = 8) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = str(cfg.task)
        self.mix = cfg.get("mix") if is_mixed(self.task) else None
        self.weights = mix_weights(self.mix) if self.mix is not None else None
        self.tasks = view_tasks(self.task, self.mix)  # unknown task names fail here, before any file is read
        self.views = ViewOptions.from_cfg(cfg.get("views"))
        self.sampler = build_sampler(sampler_cfg)
        self.eval_sampler = build_sampler(eval_sampler_cfg) if eval_sampler_cfg else self.sampler
        self.encoder = SampleEncoder(backbone, get_task(self.tasks[0]) if len(self.tasks) == 1 else None,
                                     system_prompt=system_prompt, look_instruction=look_instruction)
        self.look_frames = int(look_frames)
        self.collate = Collator(backbone.pad_id if pad_id is None else pad_id)
        self.seed = int(seed)
        self.with_target = with_target
        self.size_fn, self.size_key = backbone.frame_size() if cfg.get("decode_resize", True) else (None, "")
        self.decoder = check_decoder(str(cfg.get("decoder", "pyav")))  # fails here, not in a worker
        self.option_order = str(cfg.get("train_option_order") or "file")
        if self.option_order not in OPTION_ORDERS:
            raise ValueError(f"data.train_option_order={self.option_order!r}: use one of {OPTION_ORDERS}")
        self.target_letter = str(cfg.get("qa_target_letter") or "answer")
        if self.target_letter not in TARGET_LETTERS:
            raise ValueError(f"data.qa_target_letter={self.target_letter!r}: use one of {TARGET_LETTERS}")
        difficulty = cfg.get("difficulty") or {}
        self.curriculum = bool(difficulty.get("curriculum"))  # the training order is the pass-rate order
        if self.curriculum and not difficulty.get("file"):
            raise ValueError("data.difficulty.curriculum=true needs data.difficulty.file (the pass rates to order by; "
                             "write it with `python -m vau data difficulty`)")
        cache_dir = cfg.get("frame_cache_dir")
        self.cache = FrameCache(cache_dir) if cache_dir else None
        self.datasets: dict[str, VideoTaskDataset] = {}
        self._resume_position: dict[str, Any] | None = None  # set from a checkpoint by load_state_dict

    def prepare_data(self) -> None:
        gen = self.cfg.get("generate")
        if gen:
            generate(self.cfg.root, **dict(gen))

    def _samples(self, split: str, path: str) -> list[Sample]:
        train = split == "train"
        rows = read_rows(path, self.cfg.get("format"))
        if self.cfg.get("reflect"):  # SRVAU-R1 reflection chains for the reflect tasks, built in memory
            rows = attach_chains(rows, self.tasks, views=self.views, **dict(self.cfg.reflect))
        resolver = VideoResolver(self.cfg.get("video_root"), dict(self.cfg.get("video_roots") or {}))
        limit = (self.cfg.get("limit") or {}).get(split)
        samples: list[Sample] = []
        for name in self.tasks:
            kept = build_samples(rows, name, train, self.views, lambda a: str(resolver(a.video, a.source)))
            kept = kept[: int(limit)] if limit is not None else kept
            dropped = drop_counts(rows, name, train, self.views)
            log.info("%s: %d %s samples from %s (%s rules)%s", split, len(kept), name, path,
                     "training" if train else "evaluation",
                     "; left out: " + ", ".join(f"{n} {why}" for why, n in dropped.items()) if dropped else "")
            samples += kept
        if train and (self.cfg.get("difficulty") or {}).get("file"):
            samples = keep_pass_band(samples, self.cfg.difficulty, path)
        if self.cfg.get("look_chains"):  # where each clip's cue shows: look chains for the clips whose frames miss it
            samples = with_cues(samples, rows, path)
        if train and self.cfg.get("qa_option_check"):  # targets that check every option (vau.tasks.qa.option_check)
            samples = [replace(s, extra={**s.extra, OPTION_CHECK_KEY: True}) for s in samples]
        shifts = None if train else parse_shifts(self.cfg.get("qa_shifts"))
        if shifts:  # position-robust evaluation: every question also under cyclic shifts of its options
            expanded: list[Sample] = []
            for sample in samples:
                asks_options = get_task(sample.task).asks_options
                expanded += [shift_options(sample, k) for k in shifts] if asks_options else [sample]
            samples = expanded
            log.info("%s: questions asked under option shifts %s (%d samples)", split, shifts, len(samples))
        notes = summarize(rows)
        if notes:
            log.info("%s: normalised rows in %s: %s", split, path, ", ".join(f"{k}={v}" for k, v in notes.items()))
        return samples

    def _dataset(self, split: str) -> VideoTaskDataset | None:
        path = (self.cfg.get("annotations") or {}).get(split)
        if not path:
            return None
        if split not in self.datasets:
            samples = self._samples(split, str(path))
            if split == "train" and self.target_letter == "random_chain":
                unquoted = [s for s in samples if s.options and s.answer and not quotes_answer(s)]
                if unquoted:
                    raise ValueError(f"data.qa_target_letter=random_chain: the reasoning of {len(unquoted)} row(s) of "
                                     f"{path} does not quote its answer option (first: row {unquoted[0].row}, "
                                     f"{unquoted[0].video}), so it cannot be retold for another option; use "
                                     f"qa_target_letter=random (the letter alone drawn at random)")
            if not samples:
                raise ValueError(f"{path}: no rows usable for task {self.task!r} (config key data.annotations.{split}); "
                                 f"`python -m vau data stats annotations={path}` shows what each task keeps")
            self.datasets[split] = self.dataset_of(samples, train=split == "train")
        return self.datasets[split]

    def dataset_of(self, samples: list[Sample], train: bool = False) -> VideoTaskDataset:
        """A dataset of given samples with this DataModule's encoder, frame sampler, resize and decoder (``predict``
        builds its samples from a file or a folder of videos)."""
        return VideoTaskDataset(
            samples, self.encoder, self.sampler if train else self.eval_sampler, train=train, seed=self.seed,
            with_target=self.with_target, size_fn=self.size_fn, size_key=self.size_key, cache=self.cache,
            num_threads=int(self.cfg.get("decode_threads", 1)), decoder=self.decoder,
            shuffle_options=train and self.option_order == "shuffled",
            random_target_letters=train and self.target_letter in ("random", "random_chain"),
            target_chains=self.target_letter == "random_chain",
            frames_order=str(self.cfg.get("frames_order") or "ordered"), look_frames=self.look_frames,
            # training only: an evaluation prompt that held a chain would show the annotated window's frames to a
            # model that never asked for them (generation continues after the prompt's look)
            look_chains=train and bool(self.cfg.get("look_chains")),
        )

    def eval_loader(self, dataset: VideoTaskDataset, batch_size: int) -> DataLoader:
        """An in-order loader over ``dataset`` (no shuffling, every sample once)."""
        workers = int(self.cfg.get("num_workers", 0))
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=self.collate,
                          drop_last=False)

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self._dataset(split)

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        dataset = self._dataset(split)
        if dataset is None:
            raise ValueError(f"no {split} annotations: set data.annotations.{split}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size / data.eval_batch_size must be >= 1, got {batch_size}")
        workers = int(self.cfg.get("num_workers", 0))
        sampler = None
        if split == "train":
            epoch_size = (self.mix or {}).get("epoch_size") if self.weights else None
            sampler = EpochSampler([s.task for s in dataset.samples], self.weights, epoch_size,
                                   shuffle=bool(self.cfg.get("shuffle", True)) and not self.curriculum,
                                   seed=self.seed)
            # Rank split + exact mid-epoch resume (vau.datamodules.resume); consumes a pending resume position.
            sampler = resumable_train_sampler(sampler, self.trainer, self._resume_position, batch_size)
            self._resume_position = None
        # A generator of its own: building the iterator must not draw from the global RNG (exact resume).
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
            collate_fn=self.collate, persistent_workers=workers > 0, drop_last=False, generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", int(self.cfg.batch_size))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", int(self.cfg.get("eval_batch_size") or self.cfg.batch_size))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", int(self.cfg.get("eval_batch_size") or self.cfg.batch_size))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, **train_position(self.trainer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = dict(state_dict)
