"""Typed config nodes (Hydra structured configs): the ``module.grpo`` and ``module.generation`` nodes have their
keys, types and defaults written once, here. The module YAML files name them in their defaults list
(``/schema/grpo@grpo``), so Hydra itself rejects a key that does not exist or a value of the wrong type, naming
the key (``python -m vau`` then exits with status 2).

Example:
    >>> from omegaconf import OmegaConf
    >>> OmegaConf.structured(GRPOConfig).num_generations
    4
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationConfig:
    """``module.generation``: greedy decoding for validation, test and ``predict``."""

    max_new_tokens: int = 256
    self_correct: bool = False  # two-pass self-correction: ask to check the answer against the video, answer again
    second_pass_prompt: str | None = None  # that second user turn (None: vau.tasks.base.SECOND_PASS_PROMPT)
    engine: str = "hf"  # what generates completions: a registered rollout engine (vau.rollout)


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
    # joint | per_turn: replies with a first answer and a reflection (reflect tasks, two-pass replies): per_turn gives
    # the tokens up to the first </answer> the advantage of the first-turn rewards (initial_accuracy) and the rest
    # that of the other rewards, each normalised within its group, so a deliberately wrong first answer cannot pay.
    turn_credit: str = "joint"
    log_completions_every_n_steps: int | None = 50  # a table of completions in TensorBoard (None/0: never)
    # A NaN/inf reward: error (stop, naming reward and sample) | skip (leave that completion out of advantages and
    # loss; counted in train/skipped_completions).
    nonfinite_rewards: str = "error"


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (group ``schema``); :func:`vau.config.compose` calls it."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="schema", name="grpo", node=GRPOConfig)
    store.store(group="schema", name="generation", node=GenerationConfig)
