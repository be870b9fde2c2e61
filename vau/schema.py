"""Typed config nodes (Hydra structured configs): the ``data``, ``trainer``, ``module.grpo`` and
``module.generation`` nodes have their keys, types and defaults written once, here. The YAML files name them in
their defaults list (``/schema/grpo@grpo``, ``/schema/data@_here_``), so Hydra itself rejects a key that does not
exist or a value of the wrong type, naming the key (``python -m vau`` then exits with status 2).

Example:
    >>> from omegaconf import OmegaConf
    >>> OmegaConf.structured(GRPOConfig).num_generations
    4
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerationConfig:
    """``module.generation``: greedy decoding for validation, test and ``predict``."""

    max_new_tokens: int = 256
    self_correct: bool = False  # two-pass self-correction: ask to check the answer against the video, answer again
    second_pass_prompt: str | None = None  # that second user turn (None: vau.tasks.base.SECOND_PASS_PROMPT)
    engine: str = "hf"  # what generates completions: a registered rollout engine (vau.rollout)
    # Look again (vau.rollout.look): the prompt offers <look>[start, end]</look> after the answer; a reply that asks
    # stops there, is shown look_frames frames of that window as a new user turn, and goes on (reflect, think, answer).
    look_again: bool = False
    look_frames: int = 8  # frames decoded from the window of each look (true timestamps)
    max_looks: int = 1  # looks per reply
    look_frame_budget: int | None = None  # looked-at frames per reply at most (None: max_looks x look_frames)
    look_min_seconds: float = 1.0  # a shorter window is widened around its centre, inside the video


@dataclass
class DynamicSamplingConfig:
    """``module.grpo.dynamic_sampling``: replace groups without reward spread by groups of further prompts (DAPO's
    dynamic sampling; verl ``filter_groups``, ms-swift ``dynamic_sample``, EasyR1 ``online_filtering``)."""

    enabled: bool = False
    metric: str = "total"  # the reward whose spread within a group counts: "total" or a reward's name
    max_extra_batches: int = 2  # at most this many extra rollouts of data.batch_size prompts per optimiser step
    # batch: every extra rollout is data.batch_size prompts (DAPO, verl); missing: only as many prompts as groups are
    # still missing (the same budget in prompts, max_extra_batches x data.batch_size), so a step one group short rolls
    # out one prompt, not a batch
    refill: str = "batch"
    # Skip a row before its rollout when its latest groups had no spread (probability 1 - revisit^runs; GRESO,
    # arXiv 2506.02177), replacing it by another row: fewer rollouts spent on groups that would be dropped.
    skip_settled: bool = False
    revisit: float = 0.25


@dataclass
class TemporalContrastConfig:
    """``module.grpo.temporal_contrast``: T-GRPO (Video-R1, arXiv 2503.21776; vau.modules.temporal_contrast): on a
    share of the steps every prompt is also answered on shuffled frames, and the right ordered replies of a group
    whose ordered accuracy >= mu x its shuffled accuracy get a bonus alpha."""

    enabled: bool = False
    share: float = 1.0  # the share of optimiser steps that contrast (a seeded draw per step)
    alpha: float = 0.3  # Video-R1's bonus
    mu: float = 0.8  # Video-R1's margin
    reward: str = "choice_accuracy"  # the accuracy reward that says which replies are right (tag: temporal_iou)
    correct_at: float = 0.5  # a reply is right when that reward is >= this (0/1 accuracy; IoU >= 0.5 for TAG)


@dataclass
class GRPOConfig:
    """``module.grpo``: the GRPO step (docs/experiments.md; VAU-R1's RFT stage)."""

    num_generations: int = 4  # G completions per prompt (>= 2)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 1024  # max completion length during rollouts
    mask_truncated_completions: bool = False  # true: completions without EOS do not enter the loss
    loss_type: str = "grpo"  # grpo | bnpo | dr_grpo | dapo
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2  # DAPO's clip-higher uses 0.28
    beta: float = 0.04  # KL weight; 0 skips the reference forward entirely
    num_iterations: int = 1  # policy updates per rollout (old log-probs stored from the first)
    # Each prompt (video + text) computed once per pass, its KV cache shared by its G completions; false = the
    # prompt repeated G times (the reference path).
    shared_prompt: bool = True
    scale_rewards: str = "group"  # group | batch | none
    drop_zero_std_groups: bool = False
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    temporal_contrast: TemporalContrastConfig = field(default_factory=TemporalContrastConfig)
    # joint | per_turn: replies with a first answer and a reflection (reflect tasks, two-pass replies): per_turn gives
    # the tokens up to the first </answer> the advantage of the first-turn rewards (initial_accuracy) and the rest
    # that of the other rewards, each normalised within its group, so a deliberately wrong first answer cannot pay.
    turn_credit: str = "joint"
    log_completions_every_n_steps: int | None = 50  # a table of completions in TensorBoard (None/0: never)
    # A NaN/inf reward: error (stop, naming reward and sample) | skip (leave that completion out of advantages and
    # loss; counted in train/skipped_completions).
    nonfinite_rewards: str = "error"


@dataclass
class SplitFiles:
    """``data.annotations``: one annotation file per split (null: the split is not used)."""

    train: str | None = None
    val: str | None = None
    test: str | None = None


@dataclass
class SplitLimits:
    """``data.limit``: the first N samples of each task per split (null: all)."""

    train: int | None = None
    val: int | None = None
    test: int | None = None


@dataclass
class ViewsConfig:
    """``data.views``: which rows each task keeps (docs/data.md "Task views")."""

    tag_train_normal: bool = True  # TAG training also on normal clips, target [0.0, 0.0]
    tag_eval_normal: bool = False  # true adds normal clips to TAG evaluation (false-alarm rate; counts then differ)


@dataclass
class MixConfig:
    """``data.mix`` (``data.task=mixed``): one sample per (row, task); weights are each task's share of an epoch."""

    weights: dict[str, float] = field(default_factory=lambda: {"qa": 1.0, "tag": 1.0, "cls": 1.0, "cls_binary": 0.0,
                                                               "describe": 0.0})
    epoch_size: int | None = None  # training samples per epoch; None = all samples once


@dataclass
class DifficultyConfig:
    """``data.difficulty``: keep the training rows whose pass rate (``python -m vau data difficulty``) lies in a band."""

    file: str | None = None  # the pass-rate file; None: every row is kept
    keep: list[float] = field(default_factory=lambda: [0.0, 1.0])  # [min, max] pass rate kept, both included
    curriculum: bool = False  # true: every epoch runs easy -> hard (falling pass rate; unlisted rows last)


@dataclass
class DataConfig:
    """``data``: where the annotations and videos are and how samples are built (docs/data.md)."""

    name: str = "data"
    root: str = "."
    video_root: str | None = "${data.root}/videos"
    video_roots: dict[str, str] = field(default_factory=dict)  # per-source folders, matched case-insensitively
    annotations: SplitFiles = field(default_factory=SplitFiles)
    format: str = "vau_bench"  # an annotation reader registered in vau.registry.READERS
    task: str = "qa"  # a registered task, or mixed (with mix)
    limit: SplitLimits = field(default_factory=SplitLimits)
    max_bad_fraction: float = 0.01  # fail the run once more than this fraction of a split's clips are unusable
    views: ViewsConfig = field(default_factory=ViewsConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    batch_size: int = 1
    eval_batch_size: int | None = None  # None: batch_size
    num_workers: int = 0
    shuffle: bool = True
    train_option_order: str = "file"  # file | shuffled (a fresh option order every epoch)
    qa_option_check: bool = False  # SFT targets check every option before the letter
    qa_target_letter: str = "answer"  # answer | random | random_chain (chance-level SFT starts)
    qa_shifts: Any = None  # val/test: all | "0,1,2,3" | None: also ask under cyclic option shifts
    frames_order: str = "ordered"  # ordered | shuffled (every split: the sampled frames in a seeded random order)
    # SFT targets that look again (vau.tasks.base.look_chain) on data with a cue (data.generate.cue_seconds): a clip
    # whose sampled frames miss the anomaly is answered with a look at its cue's window, one that shows it directly
    look_chains: bool = False
    decode_resize: bool = True  # resize frames to the backbone's pixel budget right after decoding
    decoder: str = "pyav"  # pyav | decord
    decode_threads: int = 1  # threads per video (0 = one per core)
    frame_cache_dir: str | None = None  # decoded eval clips kept on disk
    generate: dict[str, Any] | None = None  # demo data only: the generator's arguments (vau.data.synthetic)
    reflect: dict[str, Any] | None = None  # reflect tasks: chains built in memory (vau.datatools.reflection)
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)  # training rows by pass rate


@dataclass
class TrainerConfig:
    """``trainer``: Lightning ``Trainer`` arguments (passed as they are; defaults are Lightning's where vau has none
    of its own) plus ``strategy``, which vau builds (``auto``, ``ddp`` or a node with ``name: ddp|fsdp2`` and that
    strategy's options: vau.trainer.build_strategy)."""

    accelerator: str = "auto"
    devices: Any = "auto"  # int, list of ids, or "auto"
    num_nodes: int = 1
    precision: Any = "32-true"  # e.g. 32-true, bf16-mixed, bf16-true
    strategy: Any = "auto"
    max_epochs: int | None = 1
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    max_time: str | None = None  # e.g. "00:12:00:00"
    log_every_n_steps: int = 10
    val_check_interval: Any = None  # int (batches) or float (share of an epoch)
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int = 0
    limit_train_batches: Any = None  # int (batches) or float (share); None = all
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    fast_dev_run: Any = False
    gradient_clip_val: float | None = 1.0
    gradient_clip_algorithm: str | None = None
    accumulate_grad_batches: int = 1
    deterministic: Any = False  # bool or "warn"
    benchmark: bool | None = None
    detect_anomaly: bool = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    enable_checkpointing: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    reload_dataloaders_every_n_epochs: int = 0
    profiler: str | None = None  # simple | advanced | pytorch


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (group ``schema``); :func:`vau.config.compose` calls it."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="schema", name="grpo", node=GRPOConfig)
    store.store(group="schema", name="generation", node=GenerationConfig)
    store.store(group="schema", name="data", node=DataConfig)
    store.store(group="schema", name="trainer", node=TrainerConfig)
