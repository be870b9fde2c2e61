"""GRPO: group-relative policy optimisation for video VLMs.

One training step reads as four parts:

    rollout    G sampled completions per prompt, masked after the first EOS (any of the backbone's EOS ids)
    rewards    the configured reward plugins score every completion (weighted sum)
    advantages rewards normalised within each prompt's group
    loss       clipped policy-gradient loss (+ k3 KL to the reference), ``num_iterations`` updates per rollout

The reference policy is the same model with its LoRA/QLoRA adapters disabled (no second copy), or, for full
fine-tuning, a frozen copy made only when ``beta > 0``.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from vau.backbones.adapters import in_vision
from vau.config import ConfigError
from vau.datamodules.encoding import model_inputs
from vau.datamodules.views import view_tasks
from vau.modules.base import VAUModule
from vau.modules.dynamic_sampling import SpreadHistory, concat_rewards, group_spread, part_weights, take_groups
from vau.modules.grpo_loss import (
    IS_LEVELS,
    LOSS_TYPES,
    completion_mask,
    group_advantages,
    per_turn_advantages,
    policy_loss,
)
from vau.modules.grpo_prompts import PromptSelection
from vau.modules.look_rollout import LookRollouts
from vau.modules.shared_prompt import completion_logits
from vau.modules.temporal_contrast import advantage_shift, is_contrast_step
from vau.registry import ALGORITHMS
from vau.rewards import NONFINITE_POLICIES, build_rewards
from vau.schema import GRPOConfig
from vau.tasks import get_task, task_of

log = logging.getLogger(__name__)
TURN_CREDITS = ("joint", "per_turn")
REFILLS = ("batch", "missing")  # module.grpo.dynamic_sampling.refill
FIRST_TURN_END = "</answer>"


def grpo_settings(grpo=None) -> GRPOConfig:
    """The ``module.grpo`` node as a typed :class:`vau.schema.GRPOConfig` (its defaults where ``grpo`` is silent); an
    unknown key or a value of the wrong type fails naming it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(GRPOConfig), OmegaConf.create(dict(grpo or {})))
    except OmegaConfBaseException as err:
        known = sorted(GRPOConfig.__dataclass_fields__)
        raise ValueError(f"module.grpo: {str(err).splitlines()[0]}; known keys: {known}") from None
    return OmegaConf.to_object(merged)


@dataclass(frozen=True)
class Rollout:
    """One step's completions and what the loss needs of them. A value: the steps after the rollout (rewards,
    advantages, loss) read it and return an updated copy (``dataclasses.replace``), never change it."""

    prompt: dict[str, torch.Tensor]  # prompt inputs, B rows (each prompt once)
    completion_ids: torch.Tensor  # (B*G, T), G consecutive rows per prompt
    mask: torch.Tensor  # (B*G, T) float, tokens up to and including the first EOS
    truncated: torch.Tensor  # (B*G,) bool
    texts: list[str]
    samples: list  # the Sample of every completion
    durations: list  # video length in seconds of every completion's clip
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    encoded_vision: dict | None = None  # the frozen vision tower's outputs, reused by every pass of this step
    repeated: dict[str, torch.Tensor] | None = None  # prompt inputs repeated G times (repeat path only)
    # Replies that may look again (vau.modules.look_rollout): each reply's rendered conversation (B*G rows), laid out
    # as the first prompt then the rest; completion_ids / mask then hold the rest / the tokens the policy wrote in it.
    conversation: dict[str, torch.Tensor] | None = None
    looked_vision: dict[str, torch.Tensor] | None = None  # the looked-at windows' vision inputs alone (shared prompt)
    looks: list | None = None  # each reply's look requests (vau.rollout.look.LookTurns.looks)


@dataclass(frozen=True)
class Part:
    """A rollout of one batch of prompts with its rewards and advantages: a step has one, or more with dynamic
    sampling (the step's own batch, then extra batches; :mod:`vau.modules.dynamic_sampling`)."""

    rollout: Rollout
    rewards: Any  # vau.rewards.RewardResult
    advantages: torch.Tensor
    zero_std: torch.Tensor  # (B,) groups without reward spread
    kept: torch.Tensor | None = None  # (B,) groups in the loss under dynamic sampling (None: all, as configured)
    contrast: dict[str, torch.Tensor] | None = None  # T-GRPO: per-group ordered / shuffled accuracy, helped flags


def initial_answer_stats(texts: list[str], samples: list) -> dict[str, float]:
    """What the first answers of replies that reflect were: ``train/initial_accuracy`` (their mean score) and, for
    tasks with a finite answer set (``Task.answer_categories``), the share of first answers in each category. A
    policy that opens with a wrong answer on purpose (and corrects it) shows here as a falling initial accuracy or a
    letter it never opens with."""
    scores: list[float] = []
    counts: dict[str, int] = {}
    categorical = 0
    for text, sample in zip(texts, samples):
        task = task_of(sample)
        score = task.initial_accuracy(text, sample) if task is not None else None
        if score is None:
            continue
        scores.append(float(score))
        categories = task.answer_categories(sample)
        if categories:
            categorical += 1
            first = task.parse_initial(text, sample)
            for category in categories:
                counts[category] = counts.get(category, 0) + int(first == category)
    out = {"train/initial_accuracy": sum(scores) / len(scores)} if scores else {}
    out.update({f"train/initial_answer_share/{c}": n / categorical for c, n in counts.items()})
    return out


@ALGORITHMS.register("grpo")
class GRPOModule(LookRollouts, PromptSelection, VAUModule):
    """GRPO: G sampled replies per prompt, rewards, group-relative advantages, clipped policy-gradient loss.

    Args:
        rewards: a :class:`vau.rewards.RewardSet` (required).
        grpo: config node, see ``conf/module/grpo.yaml`` for every key and its meaning.
        max_grad_norm: gradient clipping (this module steps its optimiser itself; the CLI passes
            ``trainer.gradient_clip_val`` here).
        Others: see :class:`VAUModule`.
    """

    needs_targets = False  # rollouts generate the replies; the DataModule encodes prompts only

    def __init__(self, backbone, optim, task: str, rewards, grpo=None, generation=None,
                 max_grad_norm: float | None = 1.0, mix=None) -> None:
        super().__init__(backbone, optim, task, generation, rewards=rewards, mix=mix)
        self.automatic_optimization = False  # several updates per rollout (num_iterations)
        cfg = self.cfg = grpo_settings(grpo)
        self.G = int(cfg.num_generations)
        if self.G < 2:
            raise ValueError(f"module.grpo.num_generations={self.G}: GRPO compares completions within a group, "
                             f"so it needs at least 2 (the VAU-R1 setting is 4)")
        if rewards is None or not len(rewards):
            raise ValueError("GRPO needs at least one reward: set the `reward` config group (e.g. reward=qa)")
        if cfg.loss_type not in LOSS_TYPES or cfg.importance_sampling_level not in IS_LEVELS:
            raise ValueError(f"module.grpo.loss_type must be one of {LOSS_TYPES} and importance_sampling_level "
                             f"one of {IS_LEVELS}")
        self.shared_prompt = bool(cfg.shared_prompt)
        if cfg.nonfinite_rewards not in NONFINITE_POLICIES:
            raise ValueError(f"module.grpo.nonfinite_rewards={cfg.nonfinite_rewards!r}: use one of "
                             f"{NONFINITE_POLICIES}")
        self.nonfinite_rewards = str(cfg.nonfinite_rewards)
        if cfg.turn_credit not in TURN_CREDITS:
            raise ValueError(f"module.grpo.turn_credit={cfg.turn_credit!r}: use one of {TURN_CREDITS}")
        self.turn_credit = str(cfg.turn_credit)
        self.dynamic = cfg.dynamic_sampling
        if int(self.dynamic.max_extra_batches) < 0:
            raise ValueError(f"module.grpo.dynamic_sampling.max_extra_batches={self.dynamic.max_extra_batches}: "
                             f"give 0 or more extra rollouts per step")
        if self.dynamic.refill not in REFILLS:
            raise ValueError(f"module.grpo.dynamic_sampling.refill={self.dynamic.refill!r}: use one of {REFILLS}")
        if self.dynamic.enabled and self.dynamic.metric != "total" and self.dynamic.metric not in rewards.weights:
            raise ValueError(f"module.grpo.dynamic_sampling.metric={self.dynamic.metric!r}: use 'total' or one of "
                             f"the configured rewards {list(rewards.weights)}")
        self.history = SpreadHistory(self.dynamic.revisit) if self.dynamic.enabled and self.dynamic.skip_settled \
            else None
        self.skipped_prompts = 0  # rows skipped before their rollout in this step (dynamic_sampling.skip_settled)
        self.contrast = cfg.temporal_contrast
        if self.contrast.enabled and self.contrast.reward not in rewards.weights:
            raise ValueError(f"module.grpo.temporal_contrast.reward={self.contrast.reward!r}: name the accuracy reward "
                             f"among the configured rewards {list(rewards.weights)}")
        if not 0.0 <= float(self.contrast.share) <= 1.0:
            raise ValueError(f"module.grpo.temporal_contrast.share={self.contrast.share}: give a share in [0, 1]")
        if self.contrast.enabled and str(cfg.scale_rewards) == "group":
            log.warning("module.grpo.temporal_contrast with scale_rewards=group: on a 0/1 accuracy the bonus moves no "
                        "advantage in a group where nothing else varies (it only rescales the group's rewards); "
                        "train/temporal_contrast/advantage_shift shows how much it moved")
        if self.look_again and (self.turn_credit != "joint" or self.contrast.enabled):
            # per turn would need the look turn's boundary in the conversation layout; a shuffled T-GRPO pass would
            # have to re-read the looked-at window shuffled too. Neither is built yet.
            raise ValueError("module.generation.look_again in GRPO: use module.grpo.turn_credit=joint and "
                             "temporal_contrast.enabled=false (multi-turn look rollouts support neither yet)")
        self.beta = float(cfg.beta)
        self.num_iterations = int(cfg.num_iterations)
        self.max_grad_norm = max_grad_norm
        self.ref_model: torch.nn.Module | None = None

    @classmethod
    def config_kwargs(cls, cfg, run_dir) -> dict[str, Any]:
        kwargs = super().config_kwargs(cfg, run_dir)
        if kwargs["rewards"] is None:
            # No reward set configured: each task of the view brings its own (vau.tasks.Task.default_rewards).
            merged: dict[str, Any] = {}
            for name in view_tasks(cfg.data.task, cfg.data.get("mix")):
                merged.update({k: dict(v) for k, v in get_task(name).default_rewards.items()})
            log.info("reward config is empty: using the tasks' default rewards %s", merged)
            kwargs["rewards"] = build_rewards(merged)
        # This module steps its optimiser itself (several updates per rollout): it clips with trainer's value.
        return {**kwargs, "grpo": cfg.module.get("grpo"), "max_grad_norm": cfg.trainer.get("gradient_clip_val")}

    @classmethod
    def trainer_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        kwargs.pop("gradient_clip_val", None)  # clipped in training_step (manual optimisation)
        if kwargs.get("accumulate_grad_batches", 1) != 1:
            raise ConfigError("module=grpo: trainer.accumulate_grad_batches must be 1; raise data.batch_size or "
                              "module.grpo.num_generations for larger rollouts")
        return kwargs

    def _checkpointing(self) -> bool:
        """Gradient checkpointing is on: it drops the KV cache in training passes, so those take the repeat path."""
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        return any(getattr(m, "gradient_checkpointing", False) for m in base.modules())

    def modules_to_shard(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.ref_model] if self.ref_model is not None else [])

    # -- reference policy -----------------------------------------------------------------------------------------
    def _uses_adapters(self) -> bool:
        return hasattr(self.model, "disable_adapter") and bool(getattr(self.model, "peft_config", None))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.beta != 0.0 and not self._uses_adapters() and self.ref_model is None:
            # Full fine-tuning: a frozen copy of the starting weights. Kept out of the state dict (not a submodule).
            ref = copy.deepcopy(self.model).eval()
            ref.requires_grad_(False)
            object.__setattr__(self, "ref_model", ref)

    @contextmanager
    def reference_policy(self):
        """Yields the model to score the reference log-probs with."""
        if self._uses_adapters():
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.ref_model

    # -- 1. rollout -----------------------------------------------------------------------------------------------
    def rollout(self, batch: dict[str, Any]) -> Rollout:
        if self.look_again:  # the prompt offers a second look: multi-turn replies (vau.modules.look_rollout)
            memo: dict = {}  # each prompt's clip and looked-at windows decoded once for its G replies
            fields = self.look_rollout_fields(batch, self.look_turns(batch, memo), memo)
            return Rollout(model_inputs(batch, prompt_only=True), samples=[s for s in batch["samples"] for _ in
                                                                           range(self.G)],
                           durations=[d for d in batch["durations"] for _ in range(self.G)], **fields)
        prompt = model_inputs(batch, prompt_only=True)
        ids, encoded, repeated = self.sample_completions(prompt)
        # The ids generation stopped at: released checkpoints stop at end-of-turn or at end-of-text.
        mask, truncated = completion_mask(ids, self.backbone.eos_token_ids)
        if self.cfg.mask_truncated_completions:
            mask = mask * (~truncated).float().unsqueeze(1)
        samples = [s for s in batch["samples"] for _ in range(self.G)]
        durations = [d for d in batch.get("durations", [None] * len(batch["samples"])) for _ in range(self.G)]
        if repeated is None and (not self.shared_prompt or self._checkpointing()):
            # the repeat path of token_logps needs G copies of each prompt; made once per step, here
            repeated = self.backbone.repeat_vision(prompt, self.G)
        return Rollout(prompt, ids, mask, truncated, self.decode(ids), samples, durations, encoded_vision=encoded,
                       repeated=repeated)

    def sampling(self) -> dict[str, Any]:
        """The rollouts' ``generate`` keyword arguments: sampled at ``module.grpo``'s temperature, top_p, top_k."""
        return {"do_sample": True, "temperature": float(self.cfg.temperature), "top_p": float(self.cfg.top_p),
                "top_k": int(self.cfg.top_k) or None}

    def sample_completions(self, prompt: dict[str, torch.Tensor], **generate_kwargs):
        """G sampled completions of every prompt from the rollout engine: (ids (B*G, T), frozen vision outputs or
        None, the prompt repeated G times or None). ``generate_kwargs`` add to / override the configured sampling."""
        return self.engine.sample(prompt, self.G, int(self.cfg.max_new_tokens), **{**self.sampling(), **generate_kwargs})

    def vision_frozen(self) -> bool:
        """No vision-tower parameter trains (LoRA/QLoRA without vision adapters): its outputs are fixed all step."""
        prefixes = self.backbone.vision_module_prefixes
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        return not any(p.requires_grad for n, p in base.named_parameters() if in_vision(n, prefixes))

    # -- 2. rewards -----------------------------------------------------------------------------------------------
    def score(self, rollout: Rollout):
        lengths = rollout.mask.sum(dim=1).long().tolist()
        extra = {} if rollout.looks is None else {"looked_frames": self.looked_frames(rollout.looks)}
        return self.rewards(rollout.texts, rollout.samples, completion_lengths=lengths,
                            max_new_tokens=int(self.cfg.max_new_tokens), durations=rollout.durations,
                            nonfinite=self.nonfinite_rewards, **extra)

    # -- 3. advantages --------------------------------------------------------------------------------------------
    def advantages(self, rewards, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, Rollout]:
        """Group-relative advantages of a :class:`vau.rewards.RewardResult`: (B*G,) per completion, or (B*G, T) per
        token under ``turn_credit: per_turn``; the (B,) flag of groups without reward spread; and the rollout with
        its loss mask narrowed to the completions that count."""
        valid = None
        mask = rollout.mask
        if rewards.skipped is not None:
            # Completions whose reward was not finite (nonfinite_rewards=skip): out of the group statistics and the loss.
            valid = ~rewards.skipped.to(self.device)
            mask = mask * valid.float().to(mask.device).unsqueeze(1)
        scale = str(self.cfg.scale_rewards)
        if self.turn_credit == "per_turn":
            # Each turn normalised within its group by its own rewards: the first answer's tokens learn from the first
            # answer's score alone, so answering wrong first can never pay through a later correction.
            first, final = (r.to(self.device) for r in rewards.turn_totals())
            adv_first, zero_first = group_advantages(first, self.G, scale, valid=valid)
            adv_final, zero_final = group_advantages(final, self.G, scale, valid=valid)
            adv = per_turn_advantages(adv_first, adv_final, self.first_turn_tokens(rollout).to(self.device),
                                      rollout.completion_ids.shape[1])
            zero_std = zero_first & zero_final
        else:
            adv, zero_std = group_advantages(rewards.total.to(self.device), self.G, scale, valid=valid)
        if self.cfg.drop_zero_std_groups:
            # Groups with identical rewards carry no signal; drop them from the loss (and its normalisation).
            mask = mask * (~zero_std).float().repeat_interleave(self.G).unsqueeze(1).to(mask.device)
        return adv.to(self.device), zero_std, (rollout if mask is rollout.mask else replace(rollout, mask=mask))

    def first_turn_tokens(self, rollout: Rollout) -> torch.Tensor:
        """(B*G,) number of tokens up to and including the first ``</answer>`` of each completion that has a first
        answer before a reflection (``Task.initial_reply``); 0 for the others (their reply is one turn)."""
        tokenizer = self.backbone.processor.tokenizer
        out = torch.zeros(len(rollout.texts), dtype=torch.long)
        lengths = rollout.mask.sum(dim=1).long().tolist()
        for i, (text, sample) in enumerate(zip(rollout.texts, rollout.samples)):
            task = task_of(sample)
            if task is None or task.initial_reply(text) is None or FIRST_TURN_END not in text:
                continue
            ids = rollout.completion_ids[i, : lengths[i]].tolist()
            low, high = 1, len(ids)  # the shortest prefix whose text holds the tag (decoding is monotone in k)
            while low < high:
                mid = (low + high) // 2
                if FIRST_TURN_END in tokenizer.decode(ids[:mid], skip_special_tokens=True):
                    high = mid
                else:
                    low = mid + 1
            out[i] = low
        return out

    # -- 4. loss --------------------------------------------------------------------------------------------------
    def token_logps(self, model: torch.nn.Module, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs (and entropies) of the completions under ``model``, at the sampling temperature.

        Shared-prompt path: the prompt runs once and its cache serves its G completions (gradients flow back through
        it). Repeat path (``shared_prompt=false``, or a training pass under gradient checkpointing, which drops the
        cache): one forward over G copies of each prompt followed by its completion.
        """
        if rollout.conversation is not None:
            logits = self.conversation_logits(model, rollout).float()
        elif self.shared_prompt and not (torch.is_grad_enabled() and self._checkpointing()):
            logits = completion_logits(model, self.backbone, rollout.prompt, rollout.completion_ids,
                                       rollout.mask.long(), self.G, rollout.encoded_vision).float()
        else:
            prompt = rollout.repeated if rollout.repeated is not None else self.backbone.repeat_vision(rollout.prompt,
                                                                                                        self.G)
            T = rollout.completion_ids.shape[1]
            inputs = self.backbone.append_text(prompt, rollout.completion_ids, rollout.mask.long())
            logits = model(**inputs, logits_to_keep=T + 1, use_cache=False).logits[:, :-1].float()
        logits = logits / float(self.cfg.temperature)
        logprobs = torch.log_softmax(logits, dim=-1)
        logps = logprobs.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
        entropy = -(logprobs.exp() * logprobs).sum(-1)
        return logps, entropy.detach()

    def loss(self, rollout: Rollout, advantages: torch.Tensor, num_items: torch.Tensor | None = None):
        """``(loss, stats, mean entropy, rollout)``; the rollout returned holds the old log-probs the next iteration
        over it (``num_iterations`` > 1) compares with. ``num_items``: the ``dapo`` denominator when the step has
        several parts (default: this rollout's tokens, summed over processes)."""
        logps, entropy = self.token_logps(self.model, rollout)
        if rollout.old_logps is None:
            # First update on this rollout: the policy that sampled it is the current one.
            rollout = replace(rollout, old_logps=logps.detach())
        if self.cfg.loss_type == "dapo" and num_items is None:
            num_items = self.global_tokens([rollout])
        # named in the error if the loss is not finite (see VAUModule.on_after_backward)
        self._loss_terms = {"policy log-probs": logps, "old log-probs": rollout.old_logps,
                            "reference log-probs": rollout.ref_logps, "advantages": advantages}
        loss, stats = policy_loss(
            logps, rollout.old_logps, advantages, rollout.mask, loss_type=self.cfg.loss_type,
            epsilon_low=float(self.cfg.epsilon_low), epsilon_high=float(self.cfg.epsilon_high),
            beta=self.beta, ref_logps=rollout.ref_logps,
            importance_sampling_level=self.cfg.importance_sampling_level,
            max_completion_length=int(self.cfg.max_new_tokens), num_items=num_items if self.cfg.loss_type == "dapo"
            else None,
        )
        entropy_mean = (entropy * rollout.mask).sum() / rollout.mask.sum().clamp(min=1)
        return loss, stats, entropy_mean, rollout

    @staticmethod
    def global_tokens(rollouts: list[Rollout]) -> torch.Tensor:
        """Completion tokens in the loss over ``rollouts``, averaged over processes (DDP averages gradients): the
        ``dapo`` denominator."""
        num_items = sum(r.mask.sum() for r in rollouts)
        if dist.is_available() and dist.is_initialized():
            num_items = num_items.clone()
            dist.all_reduce(num_items)
            num_items = num_items / dist.get_world_size()
        return num_items

    # -- dynamic sampling -----------------------------------------------------------------------------------------
    def part(self, batch: dict[str, Any], contrast: bool = False) -> Part:
        """Rollout, rewards and advantages of one batch of prompts (``contrast``: with T-GRPO's bonus)."""
        rollout = self.rollout(batch)
        rewards = self.score(rollout)
        stats, plain = None, rewards
        if contrast:
            rewards, stats = self.temporal_contrast(batch, rewards)
        advantages, zero_std, narrowed = self.advantages(rewards, rollout)
        if stats is not None:
            # How far the bonus moved the advantages: with group-std scaling and a 0/1 accuracy as the only spread
            # it is an affine map of each group's rewards, and the advantages do not move at all.
            stats["advantage_shift"] = advantage_shift(advantages, self.advantages(plain, rollout)[0], narrowed.mask)
        rollout = narrowed
        if self.history is not None and all(k is not None for k in batch.get("keys") or [None]):
            self.history.observe([k[1] for k in batch["keys"]], group_spread(rewards, str(self.dynamic.metric), self.G))
        return Part(rollout, rewards, advantages, zero_std, contrast=stats)

    def refill(self, batch: dict[str, Any], first: Part, contrast: bool = False) -> list[Part]:
        """The step's parts under dynamic sampling: ``first`` and extra batches until ``data.batch_size`` groups with
        reward spread are kept (or the extra budget of ``max_extra_batches`` x ``data.batch_size`` prompts is spent);
        an extra batch is ``data.batch_size`` prompts (``refill: batch``) or as many as groups are missing
        (``refill: missing``); every part's loss mask narrowed to its kept groups."""
        want = int(batch["size"])
        metric = str(self.dynamic.metric)
        parts = [replace(first, kept=take_groups(group_spread(first.rewards, metric, self.G), want))]
        kept, number, spent, budget = int(parts[0].kept.sum()), 0, 0, int(self.dynamic.max_extra_batches) * want
        while spent < budget and self._any_rank(kept < want):
            # every rank draws as many prompts as the rank that misses the most (collectives must match)
            size = want if self.dynamic.refill == "batch" else min(self._max_rank(want - kept), budget - spent)
            extra = self.extra_batch(size, number)
            number, spent = number + 1, spent + size
            if not extra["size"]:
                continue  # every drawn video was unusable (counted by the dataset): the attempt is spent all the same
            part = self.part(extra, contrast)
            take = take_groups(group_spread(part.rewards, metric, self.G), want - kept)
            parts.append(replace(part, kept=take))
            kept += int(take.sum())
        out = []
        for part in parts:
            rows = part.kept.repeat_interleave(self.G).float().unsqueeze(1).to(part.rollout.mask.device)
            out.append(replace(part, rollout=replace(part.rollout, mask=part.rollout.mask * rows)))
        return out

    # -- the step -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not batch["size"]:
            return None  # every video in the batch was unusable (counted by BadVideoMonitor)
        self.skipped_prompts = 0
        if self.history is not None:
            batch = self.prefilter(batch)
            if not batch["size"]:
                return None
        contrast = bool(self.contrast.enabled) and is_contrast_step(
            int(self.trainer.datamodule.seed), int(self.global_step), float(self.contrast.share))
        parts = [self.part(batch, contrast)]
        if self.dynamic.enabled:
            parts = self.refill(batch, parts[0], contrast)
        if self.beta != 0.0:
            with torch.no_grad(), self.reference_policy() as ref:
                parts = [replace(p, rollout=replace(p.rollout, ref_logps=self.token_logps(ref, p.rollout)[0]))
                         for p in parts]
        weights, num_items = [1.0], None
        if len(parts) > 1 or self.dynamic.enabled:
            rows = [p.rollout.mask.shape[0] for p in parts]
            kept_rows = [int(p.kept.sum()) * self.G for p in parts]
            kept_tokens = [float(p.rollout.mask.sum()) for p in parts]
            weights = part_weights(self.cfg.loss_type, rows, kept_rows, kept_tokens)
            if self.cfg.loss_type == "dapo":
                num_items = self.global_tokens([p.rollout for p in parts])
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        for _ in range(self.num_iterations):
            total, stats, entropy = 0.0, None, 0.0
            for i, (part, weight) in enumerate(zip(parts, weights)):
                loss, part_stats, part_entropy, rollout = self.loss(part.rollout, part.advantages, num_items)
                parts[i] = replace(part, rollout=rollout)
                self.manual_backward(loss * weight if weight != 1.0 else loss)
                total = total + loss.detach() * weight
                # a step whose groups all lacked spread has weights 0 (nothing to learn): entropy as a plain mean
                share = weight / sum(weights) if sum(weights) else 1.0 / len(parts)
                entropy = entropy + part_entropy * (share if len(parts) > 1 else 1.0)
                stats = part_stats if stats is None else stats  # the step's own batch (comparable with plain GRPO)
            if self.max_grad_norm:
                self.clip_gradients(optimizer, gradient_clip_val=float(self.max_grad_norm),
                                    gradient_clip_algorithm="norm")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        self._log_step(batch, parts, total, stats, entropy)

    default_decay = "constant"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.history is not None:  # the skip rule's memory, every rank's: a resumed run skips the same rows
            states = [self.history.state_dict()]
            if dist.is_available() and dist.is_initialized():  # called on every rank, as for the RNG states
                states = [None] * dist.get_world_size()
                dist.all_gather_object(states, self.history.state_dict())
            checkpoint["vau.spread_history"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        states = checkpoint.get("vau.spread_history")
        if self.history is not None and states:
            self.history.load_state_dict(states[self.global_rank] if self.global_rank < len(states) else states[0])

    def total_optimizer_steps(self) -> int:
        # One optimiser step per iteration over each rollout: the schedule counts those.
        return int(self.trainer.estimated_stepping_batches) * self.num_iterations

    # -- logging --------------------------------------------------------------------------------------------------
    def _log_step(self, batch, parts: list[Part], loss, stats, entropy) -> None:
        n = batch["size"]
        rollout, zero_std = parts[0].rollout, parts[0].zero_std
        rewards = concat_rewards([p.rewards for p in parts])
        lengths = rollout.mask.sum(dim=1)
        if (lengths > 0).any():
            lengths = lengths[lengths > 0]  # completions masked out of the loss (dropped groups) have no length to log
        values = {
            "train/loss": loss.detach(), "train/kl": stats.kl, "train/clip_ratio/low": stats.clip_low,
            "train/clip_ratio/high": stats.clip_high, "train/clip_ratio/region": stats.clip_region,
            "train/entropy": entropy, "train/zero_std_fraction": zero_std.float().mean(),
            "train/completion_length/mean": lengths.mean(), "train/completion_length/min": lengths.min(),
            "train/completion_length/max": lengths.max(), "train/truncated_fraction": rollout.truncated.float().mean(),
            # completions of this step left out for a non-finite reward (module.grpo.nonfinite_rewards=skip)
            "train/skipped_completions": float(rewards.num_skipped),
        }
        if self.dynamic.enabled:
            # groups in this optimiser step with reward spread / dropped; extra batches rolled out for them
            values["train/dynamic_sampling/kept_groups"] = float(sum(int(p.kept.sum()) for p in parts))
            values["train/dynamic_sampling/kept_fraction"] = float(sum(int(p.kept.sum()) for p in parts)) / n
            values["train/dynamic_sampling/dropped_groups"] = float(sum(int((~p.kept).sum()) for p in parts))
            values["train/dynamic_sampling/extra_batches"] = float(len(parts) - 1)
            # prompts rolled out in refills: each extra part holds G rows per prompt
            values["train/dynamic_sampling/extra_prompts"] = float(sum(p.rollout.mask.shape[0] for p in parts[1:])
                                                                    / self.G)
            if self.history is not None:  # rows skipped before their rollout (and replaced) in this step
                values["train/dynamic_sampling/skipped_prompts"] = float(self.skipped_prompts)
        contrasted = [p.contrast for p in parts if p.contrast is not None]
        if contrasted:  # T-GRPO: the groups' accuracies on ordered and shuffled frames, the share where order helped
            for key, name in (("ordered", "ordered_accuracy"), ("shuffled", "shuffled_accuracy"),
                              ("helped", "helped_groups"), ("advantage_shift", "advantage_shift")):
                values[f"train/temporal_contrast/{name}"] = torch.cat([c[key].float() for c in contrasted]).mean()
        for name, value in rewards.means().items():
            values[f"train/reward/{name}"] = value
        for name, value in rewards.stds().items():
            values[f"train/reward_std/{name}"] = value
        values.update(initial_answer_stats(rollout.texts, rollout.samples))
        self.log_dict(values, batch_size=n)
        if rollout.looks is not None:  # train/look_rate, look_refused, looked_frames
            self._log_looks(rollout.looks, "train")
        self.log("train/reward", rewards.means()["total"], prog_bar=True, batch_size=n)
        self.log_lr(n)
        every = int(self.cfg.log_completions_every_n_steps or 0)
        # The step Lightning logs this batch's scalars at; self.global_step already counts its optimizer step(s).
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        if every and step % every == 0 and self.trainer.is_global_zero:
            self._log_completions(rollout, parts[0].rewards, step)

    def _log_completions(self, rollout: Rollout, rewards, step: int | None = None) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if not hasattr(experiment, "add_text"):
            return
        rows = ["| video | prompt | completion | " + " | ".join(rewards.per_reward) + " | total |",
                "|---|---|---|" + "---|" * (len(rewards.per_reward) + 1)]
        for i, (sample, text) in enumerate(zip(rollout.samples, rollout.texts)):
            cells = ["-" if v[i] is None else f"{v[i]:.3f}" for v in rewards.per_reward.values()]
            clean = text.replace("|", "\\|").replace("\n", " ")[:300]
            prompt = (sample.question or f"({sample.task})").replace("|", "\\|").replace("\n", " ")[:120]
            rows.append(f"| {sample.video} | {prompt} | {clean} | " + " | ".join(cells)
                        + f" | {float(rewards.total[i]):.3f} |")
        experiment.add_text("train/completions", "\n".join(rows), self.global_step if step is None else step)
