"""What SFT and GRPO share: the backbone, generation, eval metrics, optimizer/schedule, predictions file."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch

from vau.datamodules.encoding import model_inputs
from vau.datamodules.views import view_tasks
from vau.modules.adapters import uses_adapters
from vau.modules.backbones import Backbone
from vau.modules.optim import build_optimizer, warmup_schedule
from vau.modules.parallel import shard_model, synced_generation
from vau.registry import ROLLOUT_ENGINES
from vau.rewards import build_rewards
from vau.tasks import get_task
from vau.tasks.base import SECOND_PASS_PROMPT, join_passes
from vau.tasks.metrics import view_metrics

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the message gives the global step and the cause."""


def rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / Python RNG states, as types ``torch.load(weights_only=True)`` accepts."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), py_gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (a DTensor shard under FSDP2), as a plain tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


class VAUModule(L.LightningModule):
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
        self.rewards = rewards
        self.tasks = view_tasks(task, mix)
        self.val_metrics = torch.nn.ModuleDict(view_metrics(self.tasks, reflection=self.self_correct))
        self.test_metrics = torch.nn.ModuleDict(view_metrics(self.tasks, reflection=self.self_correct))

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
                setattr(module, name, torch.nn.ModuleDict(view_metrics(module.tasks, reflection=module.self_correct,
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
        inputs = model_inputs(batch, prompt_only=True)
        max_new_tokens = max_new_tokens or self.max_new_tokens
        first = self.engine.replies(inputs, max_new_tokens)
        if not self.self_correct:
            return self.decode(first)
        second = self.engine.replies(self.second_pass(inputs, first), max_new_tokens)
        return [join_passes(a, b) for a, b in zip(self.decode(first), self.decode(second))]

    def second_pass(self, inputs: dict[str, torch.Tensor], first_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prompt inputs that continue each conversation after its first reply with the second-pass user turn
        (``generation.second_pass_prompt``), built by the engine (:meth:`vau.rollout.engine.RolloutEngine.follow_up`)."""
        return self.engine.follow_up(inputs, first_ids, self.second_pass_prompt)

    # -- evaluation -------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, Any], metrics: torch.nn.ModuleDict, stage: str) -> list[str]:
        """Greedy replies of a batch, scored by the metrics (and rewards, logged); returns the replies."""
        if not batch["size"]:
            return []
        if "labels" in batch and (batch["labels"] != -100).any():
            out = self.model(**model_inputs(batch), labels=batch["labels"])
            self.log(f"{stage}/loss", out.loss, batch_size=batch["size"], sync_dist=True)
        replies = self.generate_replies(batch)
        for metric in metrics.values():
            metric.update(replies, batch["samples"])
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, batch_size=batch["size"])
        if self.rewards is not None:
            result = self.rewards(replies, list(batch["samples"]), durations=batch.get("durations"),
                                  max_new_tokens=self.max_new_tokens, nonfinite=self.nonfinite_rewards)
            for name, value in result.means().items():
                self.log(f"{stage}/reward/{name}", value, batch_size=batch["size"], sync_dist=True)
        return replies

    @staticmethod
    def prediction_records(batch: dict[str, Any], replies: list[str]) -> list[dict[str, Any]]:
        """One record per reply, as ``python -m vau score`` / ``predict`` / the HTML report read them: video, task,
        raw reply, parsed prediction, the sampled frames' times, and where the clip came from (docs/predict.md)."""
        records = []
        times = batch.get("frame_times") or [[] for _ in replies]
        durations = batch.get("durations") or [None] * len(replies)
        for sample, reply, frames, duration in zip(batch["samples"], replies, times, durations):
            parsed = get_task(sample.task).parse(reply, sample)
            record = {"video": sample.video, "task": sample.task, "response": reply,
                      "prediction": list(parsed) if isinstance(parsed, tuple) else parsed,
                      "frame_times": list(frames), "video_path": sample.video_path, "source": sample.source,
                      "row": sample.row or None,
                      "duration": None if duration is None or duration != duration else round(float(duration), 3)}
            if "shift" in sample.extra:
                record.update(shift=int(sample.extra["shift"]), options=list(sample.options))
            records.append(record)
        return records

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Greedy replies of a batch as prediction records (``python -m vau predict``)."""
        if not batch["size"]:
            return []
        return self.prediction_records(batch, self.generate_replies(batch))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Scores the batch and returns its prediction records (written by :class:`vau.eval.writer.PredictionWriter`)."""
        replies = self._eval_step(batch, self.test_metrics, "test")
        return self.prediction_records(batch, replies) if replies else []

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

    # -- checkpoints ------------------------------------------------------------------------------------------
    #: With LoRA/QLoRA, keep only the trainable (adapter) weights in checkpoints (config ``checkpoint.adapter_only``).
    adapter_only_checkpoint: bool = True

    def adapter_only_state(self) -> bool:
        """Whether checkpoints of this module hold only its trainable parameters."""
        return bool(self.adapter_only_checkpoint) and uses_adapters(self.model)

    @property
    def strict_loading(self) -> bool:
        # An adapter-only checkpoint lacks the frozen base weights, which come from backbone.path instead;
        # on_load_checkpoint checks the adapter keys itself.
        if self._strict_loading is not None:
            return bool(self._strict_loading)
        return not self.adapter_only_state()

    @strict_loading.setter
    def strict_loading(self, value: bool) -> None:
        self._strict_loading = value

    def _trainable_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adapter-only state dict (LoRA/QLoRA), plus every rank's RNG state so a resumed run samples the same."""
        adapter_only = self.adapter_only_state()
        if adapter_only:
            keep = self._trainable_keys()
            state = checkpoint.get("state_dict") or {}
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
        rng = [rng_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning calls this hook on every rank (FSDP needs them all to gather the weights), so this is safe.
            rng = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(rng, rng_state())
        checkpoint["vau"] = {"adapter_only": adapter_only, "rng_states": rng}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check an adapter-only checkpoint matches this model's adapters; restore this rank's RNG state."""
        meta = checkpoint.get("vau") or {}
        state = checkpoint.get("state_dict")
        if meta.get("adapter_only") and state is not None:
            expected = self._trainable_keys()
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            if missing or unexpected:
                raise RuntimeError(
                    f"adapter-only checkpoint does not match this model's trainable weights ({len(missing)} missing, "
                    f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[:2]}): use the same lora.* and "
                    f"backbone settings as the run that wrote it")
            # Fill in the frozen base from the freshly loaded backbone, so strict loading code paths work too.
            current = self.state_dict()
            checkpoint["state_dict"] = {**{k: v for k, v in current.items() if k not in state}, **state}
        states = meta.get("rng_states")
        if states:
            # Applied in on_train_start: between here and there Lightning builds the training DataLoader iterator,
            # which draws its base seed from the global RNG (the uninterrupted run drew it before its first step).
            self._pending_rng_state = states[self.global_rank] if self.global_rank < len(states) else states[0]

    def on_train_start(self) -> None:
        state = getattr(self, "_pending_rng_state", None)
        if state is not None:
            set_rng_state(state)
            self._pending_rng_state = None

    # -- non-finite loss / gradients ----------------------------------------------------------------------------
    #: Tensors the current loss was computed from, by name (set by a training step; inspected only when the loss is
    #: not finite, to say which term is the cause).
    _loss_terms: dict[str, torch.Tensor | None] | None = None
    _backward_loss: torch.Tensor | None = None

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self._backward_loss = loss.detach()

    def on_after_backward(self) -> None:
        """Stop the run at the first non-finite loss or gradient (before clipping and the optimiser step).

        Every rank takes part in one all-reduce of the verdict, so all of them raise together (a rank raising alone
        would leave the others waiting in the next collective).
        """
        cause = self._nonfinite_cause()
        self._backward_loss, self._loss_terms = None, None
        flag = torch.tensor(0.0 if cause is None else 1.0, device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            raise NonFiniteError(
                f"non-finite training value at global step {self.global_step}: "
                f"{cause or 'found on another rank (see its log)'}. The run stops here rather than train on NaN; "
                f"lower module.optim.lr, check the data of this step, or (GRPO) the rewards")

    def _nonfinite_cause(self) -> str | None:
        loss = self._backward_loss
        if loss is not None and not bool(torch.isfinite(loss).all()):
            bad = [name for name, t in (self._loss_terms or {}).items()
                   if isinstance(t, torch.Tensor) and not bool(torch.isfinite(_local(t)).all())]
            where = f" (non-finite {', '.join(bad)})" if bad else ""
            return f"the {type(self).__name__} loss is {float(loss)}{where}"
        named = [(name, p.grad) for name, p in self.named_parameters() if p.grad is not None]
        if not named or getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) is not None:
            return None  # fp16 loss scaling (16-mixed) overflows on purpose: its scaler skips those steps itself
        if bool(torch.stack([torch.isfinite(_local(g)).all() for _, g in named]).all()):
            return None  # one check (one device sync) on the common path; the loop below runs only on failure
        for name, grad in named:
            grad = _local(grad)
            if not bool(torch.isfinite(grad).all()):
                nan, inf = int(torch.isnan(grad).sum()), int(torch.isinf(grad).sum())
                return (f"the loss is finite ({float(loss) if loss is not None else '?'}) but parameter {name!r} has "
                        f"a non-finite gradient ({nan} NaN, {inf} inf of {grad.numel()})")
        return None

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
