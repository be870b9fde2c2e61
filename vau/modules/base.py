"""What SFT and GRPO share: the backbone, generation, evaluation (metrics and prediction records), FSDP2 sharding,
the optimiser and its schedule. Checkpoint contents and the non-finite guard are mixins of their own
(:mod:`vau.modules.checkpointing`, :mod:`vau.modules.nonfinite`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.utilities.apply_func import move_data_to_device

from vau.backbones.base import Backbone
from vau.datamodules.encoding import Collator, model_inputs
from vau.datamodules.views import view_tasks
from vau.modules.checkpointing import CheckpointState
from vau.modules.nonfinite import NonFiniteGuard
from vau.modules.optim import build_optimizer, warmup_schedule
from vau.modules.parallel import any_rank, is_sharded, shard_model, synced_generation
from vau.parsing import cut_after
from vau.registry import ROLLOUT_ENGINES
from vau.rewards import build_rewards
from vau.tasks import get_task
from vau.tasks.base import SECOND_PASS_PROMPT, join_passes
from vau.tasks.metrics import view_metrics

log = logging.getLogger(__name__)


class VAUModule(CheckpointState, NonFiniteGuard, L.LightningModule):
    """Base LightningModule over one backbone and one task.

    Args:
        backbone: the loaded model + processor.
        optim: config node with ``lr``, ``weight_decay``, ``warmup_ratio``, ``decay``, ``min_lr_ratio``.
        task: the ``data.task`` value: a task name, or ``mixed`` with ``mix`` (its tasks pick the eval metrics).
        generation: config node for eval generation: ``max_new_tokens``; ``self_correct`` (two-pass
            self-correction: after each reply, ask in a second user turn to check the answer against the video and
            answer again; the reply becomes :func:`vau.tasks.base.join_passes` of both and the reflection metrics
            are reported for every task); ``second_pass_prompt`` (that turn's text).
        rewards: optional :class:`vau.rewards.RewardSet`; its per-reward means are logged on eval replies too.
        mix: the ``data.mix`` node when ``task`` is ``mixed``.

    A training algorithm is a registered subclass (:data:`vau.registry.ALGORITHMS`, chosen by ``module.name``);
    the run builds it with :meth:`from_config` and lets it adjust the Trainer with :meth:`trainer_kwargs`.
    """

    #: Whether the DataModule encodes target text (teacher forcing) or prompts alone (generation-based training).
    needs_targets: bool = True
    #: What a NaN/inf reward does (see :class:`vau.rewards.RewardSet`): ``error``, or ``skip`` (GRPO's option).
    nonfinite_rewards: str = "error"

    def __init__(self, backbone: Backbone, optim, task: str, generation=None, rewards=None,
                 mix=None) -> None:
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps whatever mode it finds
        self.optim_cfg = optim
        self.task = task
        generation = generation or {}
        self.max_new_tokens = int(generation.get("max_new_tokens", 64))
        self.self_correct = bool(generation.get("self_correct", False))
        self.second_pass_prompt = str(generation.get("second_pass_prompt") or SECOND_PASS_PROMPT)
        self.engine_name = str(generation.get("engine") or "hf")
        self.engine = ROLLOUT_ENGINES.get(self.engine_name)(self)  # what generates (vau.rollout)
        self.look_again = bool(generation.get("look_again", False))
        if self.look_again and self.self_correct:
            raise ValueError("module.generation.look_again and self_correct both ask for a second turn: choose one")
        self.look_settings = self.engine.look_settings(generation) if self.look_again else None
        self.rewards = rewards
        self.tasks = view_tasks(task, mix)
        self.val_metrics = torch.nn.ModuleDict(view_metrics(self.tasks, reflection=self.second_turn))
        self.test_metrics = torch.nn.ModuleDict(view_metrics(self.tasks, reflection=self.second_turn))

    @property
    def second_turn(self) -> bool:
        """Whether eval replies have an initial and a final answer for every task (self-correction, look again)."""
        return self.self_correct or self.look_again

    # -- construction from config -----------------------------------------------------------------------------
    @classmethod
    def config_kwargs(cls, cfg, run_dir) -> dict[str, Any]:
        """Constructor keyword arguments (besides the backbone) from the composed run config."""
        return {"optim": cfg.module.optim, "task": cfg.data.task, "mix": cfg.data.get("mix"),
                "generation": cfg.module.get("generation"), "rewards": build_rewards(cfg.get("reward"))}

    @classmethod
    def from_config(cls, cfg, backbone: Backbone, run_dir) -> VAUModule:
        """The module of a run: ``cls(backbone, **config_kwargs(cfg, run_dir))`` plus the checkpoint settings."""
        module = cls(backbone, **cls.config_kwargs(cfg, run_dir))
        if cfg.data.get("qa_shifts"):  # eval questions asked under option shifts: report circular accuracy too
            for name in ("val_metrics", "test_metrics"):
                setattr(module, name, torch.nn.ModuleDict(view_metrics(module.tasks, reflection=module.second_turn,
                                                                       circular=True)))
        module.adapter_only_checkpoint = bool((cfg.get("checkpoint") or {}).get("adapter_only", True))
        return module

    @classmethod
    def trainer_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The Lightning ``Trainer`` arguments (``trainer`` config node) this algorithm runs with; checked here."""
        return kwargs

    def modules_to_shard(self) -> list[torch.nn.Module]:
        """The models a sharding strategy (FSDP2) must shard: the policy, and any frozen copy a subclass keeps."""
        return [self.model]

    # -- generation -------------------------------------------------------------------------------------------
    @contextmanager
    def generation_context(self) -> Iterator[dict[str, Any]]:
        """Wrap every ``generate`` call; yields the extra ``generate`` kwargs it needs (re-entrant).

        Under FSDP2 this keeps all ranks stepping until the longest completion is done (``synced_gpus``) and
        keeps the sharded layers gathered for the whole call; elsewhere it does nothing
        (see :func:`vau.modules.parallel.synced_generation`).
        """
        if getattr(self, "_generation_kwargs", None) is not None:
            yield self._generation_kwargs
            return

        unshard = getattr(getattr(self._trainer, "strategy", None), "unshard_for_generation", True)
        with synced_generation(self.model, unshard=unshard) as kwargs:
            self._generation_kwargs = kwargs
            try:
                yield kwargs
            finally:
                self._generation_kwargs = None

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, times: int = 1,
                     encoded_vision: dict[str, Any] | None = None, **sampling) -> torch.Tensor:
        """Completion token ids (B * times, T) of prompt ``inputs`` from the rollout engine (:mod:`vau.rollout`)."""
        return self.engine.generate(inputs, max_new_tokens, times=times, encoded_vision=encoded_vision, **sampling)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.backbone.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def generate_replies(self, batch: dict[str, Any], max_new_tokens: int | None = None) -> list[str]:
        """Greedy replies, as text; with ``generation.self_correct`` the two-pass replies (:meth:`second_pass`)."""
        return self.replies_and_looks(batch, max_new_tokens)[0]

    def replies_and_looks(self, batch: dict[str, Any], max_new_tokens: int | None = None
                          ) -> tuple[list[str], list[list[dict[str, Any]]] | None]:
        """Greedy replies and, with ``generation.look_again``, each reply's looks (:mod:`vau.rollout.look`; else
        None). Self-correction's replies are the two passes joined (:meth:`second_pass`)."""
        inputs = model_inputs(batch, prompt_only=True)
        max_new_tokens = max_new_tokens or self.max_new_tokens
        if self.look_again:
            return self.engine.replies_with_looks(inputs, max_new_tokens, batch["durations"],
                                                  self._look_inputs(batch), self.look_settings,
                                                  agree=self.look_turns_agree())
        first = self.engine.replies(inputs, max_new_tokens)
        if not self.self_correct:
            return self.decode(first), None
        second = self.engine.replies(self.second_pass(inputs, first), max_new_tokens)
        return [join_passes(a, b) for a, b in zip(self.decode(first), self.decode(second))], None

    def look_turns_agree(self):
        """Under FSDP2 on several processes every ``generate`` is a collective, so every rank takes as many look turns
        as the rank that takes the most (:func:`vau.rollout.look.turns_with_looks`): returns the test "does any rank
        go on" for that; None elsewhere (each rank decides alone)."""
        if is_sharded(self.model) and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return any_rank
        return None

    def _look_inputs(self, batch: dict[str, Any], dataset=None, group: int = 1, memo: dict | None = None):
        """The environment of a look (:data:`vau.rollout.look.NextInputs`): the batch's examples re-read by
        ``dataset`` (default: the one being evaluated), continued after the looks, collated and moved like the batch.
        ``group``: rows per example (GRPO's G replies of each prompt); ``memo``: decoded clips kept across calls
        (:meth:`vau.datamodules.dataset.VideoTaskDataset.look_item`)."""
        dataset = self._eval_dataset() if dataset is None else dataset
        frames = self.look_settings.frames

        def next_inputs(rows, turns):
            items = [dataset.look_item(batch["keys"][row // group], batch["samples"][row // group], shown, frames,
                                       memo=memo) for row, shown in zip(rows, turns)]
            good = [item for item in items if "bad" not in item]
            times = [None if "bad" in item else item["look_frame_times"] for item in items]
            if not good:
                return None, times
            return model_inputs(move_data_to_device(Collator(self.backbone.pad_id)(good), self.device),
                                prompt_only=True), times

        return next_inputs

    def _eval_dataset(self):
        """The dataset of the loader this eval step runs on (validate, test or predict): a look re-reads from it."""
        trainer = self.trainer
        loaders = (trainer.predict_dataloaders if trainer.predicting else
                   trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders)
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        dataset = getattr(loader, "dataset", None)
        if not hasattr(dataset, "look_item"):
            raise TypeError(f"module.generation.look_again needs a dataset that can re-read its videos (look_item); "
                            f"this loader's is a {type(dataset).__name__}")
        return dataset

    def second_pass(self, inputs: dict[str, torch.Tensor], first_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prompt inputs that continue each conversation after its first reply with the second-pass user turn
        (``generation.second_pass_prompt``), built by the engine (:meth:`vau.rollout.engine.RolloutEngine.follow_up`)."""
        return self.engine.follow_up(inputs, first_ids, self.second_pass_prompt)

    # -- evaluation -------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, Any], metrics: torch.nn.ModuleDict, stage: str
                   ) -> tuple[list[str], list[list[dict[str, Any]]] | None]:
        """Greedy replies of a batch, scored by the metrics (and rewards, logged); returns the replies and their looks
        (:meth:`replies_and_looks`)."""
        if not batch["size"]:
            return [], None
        if "labels" in batch and (batch["labels"] != -100).any():
            out = self.model(**model_inputs(batch), labels=batch["labels"])
            self.log(f"{stage}/loss", out.loss, batch_size=batch["size"], sync_dist=True)
        replies, looks = self.replies_and_looks(batch)
        if looks is not None:
            self._log_looks(looks, stage)
        for metric in metrics.values():
            metric.update(replies, batch["samples"])
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, batch_size=batch["size"])
        if self.rewards is not None:
            result = self.rewards(replies, list(batch["samples"]), durations=batch.get("durations"),
                                  max_new_tokens=self.max_new_tokens, nonfinite=self.nonfinite_rewards)
            for name, value in result.means().items():
                self.log(f"{stage}/reward/{name}", value, batch_size=batch["size"], sync_dist=True)
        return replies, looks

    def _log_looks(self, looks: list[list[dict[str, Any]]], stage: str) -> None:
        """``<stage>/look_rate`` (replies shown a window), ``look_refused`` (replies whose request was refused:
        the records name why) and ``looked_frames`` (frames shown per reply)."""
        size = len(looks)
        shown = [sum(1 for look in row if look["window"] is not None) for row in looks]
        refused = [any(look["window"] is None for look in row) for row in looks]
        frames = [sum(len(look["frame_times"]) for look in row) for row in looks]
        self.log(f"{stage}/look_rate", sum(n > 0 for n in shown) / size, batch_size=size, sync_dist=True)
        self.log(f"{stage}/look_refused", sum(refused) / size, batch_size=size, sync_dist=True)
        self.log(f"{stage}/looked_frames", sum(frames) / size, batch_size=size, sync_dist=True)

    @staticmethod
    def prediction_records(batch: dict[str, Any], replies: list[str],
                           looks: list[list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
        """One record per reply, as ``python -m vau score`` / ``predict`` / the HTML report read them: video, task,
        raw reply, parsed prediction, the sampled frames' times, and where the clip came from (docs/predict.md);
        with ``generation.look_again`` also ``looks`` (window, reason, looked-at frame times) and ``initial``, the
        answer given before the first look."""
        records = []
        times = batch.get("frame_times") or [[] for _ in replies]
        durations = batch.get("durations") or [None] * len(replies)
        for i, (sample, reply, frames, duration) in enumerate(zip(batch["samples"], replies, times, durations)):
            parsed = get_task(sample.task).parse(reply, sample)
            record = {"video": sample.video, "task": sample.task, "response": reply,
                      "prediction": list(parsed) if isinstance(parsed, tuple) else parsed,
                      "frame_times": list(frames), "video_path": sample.video_path, "source": sample.source,
                      "row": sample.row or None,
                      "duration": None if duration is None or duration != duration else round(float(duration), 3)}
            if "shift" in sample.extra:
                record.update(shift=int(sample.extra["shift"]), options=list(sample.options))
            if looks is not None:
                initial = get_task(sample.task).parse(cut_after(reply), sample)
                record.update(looks=looks[i], initial=list(initial) if isinstance(initial, tuple) else initial)
            records.append(record)
        return records

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Greedy replies of a batch as prediction records (``python -m vau predict``)."""
        if not batch["size"]:
            return []
        return self.prediction_records(batch, *self.replies_and_looks(batch))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Scores the batch and returns its prediction records (written by :class:`vau.eval.writer.PredictionWriter`)."""
        replies, looks = self._eval_step(batch, self.test_metrics, "test")
        return self.prediction_records(batch, replies, looks) if replies else []

    # -- multi-device -----------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Under FSDP2 (Lightning's ``ModelParallelStrategy``): shard each decoder layer / vision block, then the root.

        Lightning calls this on every ``fit``/``validate``/``test``; sharding an already sharded model is a no-op.
        """
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = getattr(self._trainer, "strategy", None)
        if not isinstance(strategy, ModelParallelStrategy):
            return
        if hasattr(strategy, "shard_module"):
            strategy.shard_module(self)
        else:  # a plain ModelParallelStrategy: FSDP2 with default settings over its data-parallel mesh
            for model in self.modules_to_shard():
                shard_model(model, self.device_mesh["data_parallel"])

    # -- optimisation -----------------------------------------------------------------------------------------
    default_decay = "cosine"  # the schedule's shape when optim.decay is not set

    def total_optimizer_steps(self) -> int:
        """Optimiser steps the schedule spans (one per training batch here)."""
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self):
        opt = build_optimizer(self.model.named_parameters(), self.optim_cfg)
        sched = warmup_schedule(
            opt, self.total_optimizer_steps(), warmup_ratio=float(self.optim_cfg.get("warmup_ratio", 0.0)),
            decay=str(self.optim_cfg.get("decay", self.default_decay)),
            min_lr_ratio=float(self.optim_cfg.get("min_lr_ratio", 0.0)),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def log_lr(self, batch_size: int) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
