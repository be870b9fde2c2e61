"""The contract of a rollout engine (``module.generation.engine``).

An engine is built once per training module, ``ENGINE(module)``, and is asked for token ids; the module turns
them into a :class:`vau.modules.grpo.Rollout` (GRPO) or reply texts (evaluation, ``predict``), so rewards,
advantages and the loss never see which engine ran. What an engine may read from the module: ``model`` (the policy,
with its adapters), ``backbone`` (processor, end-of-sequence and suppressed ids, vision helpers, the chat
template's follow-up turn) and ``generation_context()`` (the FSDP2 synchronisation every ``generate`` runs in).

A batch keeps what an engine outside the policy's process would need besides the encoded prompt: the samples
(prompt text through their task, ``Sample.video_path``) and each clip's frame times and duration
(``batch["frame_times"]``, ``batch["durations"]``), so a server-side engine can re-read the same frames.
"""

from __future__ import annotations

from typing import Any

import torch

from vau.rollout.look import LookSettings, LookTurns, NextInputs, replies_with_looks, turns_with_looks


class RolloutEngine:
    """Generates completions for a VAU training module (see the module doc).

    Subclasses implement :meth:`generate`; :meth:`sample` and :meth:`replies` have defaults built on it.
    """

    def __init__(self, module) -> None:
        self.module = module

    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, times: int = 1,
                 encoded_vision: dict[str, Any] | None = None, **sampling) -> torch.Tensor:
        """Completion ids ``(B * times, T)`` of the prompts ``inputs`` (prompt removed, padded after the end), each
        prompt continued ``times`` times in consecutive rows; ``sampling`` are ``generate`` keyword arguments."""
        raise NotImplementedError

    def sample(self, prompt: dict[str, torch.Tensor], n: int, max_new_tokens: int,
               **sampling) -> tuple[torch.Tensor, dict | None, dict | None]:
        """GRPO's ``n`` sampled completions of every prompt: ``(ids (B*n, T), encoded vision or None, the prompt
        repeated n times or None)``; the last two are what the loss's forward passes may reuse."""
        return self.generate(prompt, max_new_tokens, times=n, **sampling), None, None

    def follow_up(self, inputs: dict[str, torch.Tensor], first_ids: torch.Tensor, text: str) -> dict[str, torch.Tensor]:
        """Prompt inputs that continue each conversation after its first reply ``first_ids`` with the user turn
        ``text`` (two-pass self-correction; a multi-turn engine's next turn)."""
        raise NotImplementedError

    def replies(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, **sampling) -> torch.Tensor:
        """Greedy completion ids of every prompt (evaluation, ``predict``, each pass of self-correction, each turn of
        a look again: ``sampling`` then holds its ``stopping_criteria``)."""
        return self.generate(inputs, max_new_tokens, do_sample=False, **sampling)

    @staticmethod
    def look_settings(generation) -> LookSettings:
        """The look keys of ``module.generation`` checked (:class:`vau.rollout.look.LookSettings`)."""
        return LookSettings.from_cfg(generation)

    def replies_with_looks(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, durations,
                           next_inputs: NextInputs, settings: LookSettings, agree=None
                           ) -> tuple[list[str], list[list[dict]]]:
        """Greedy replies that may look again at a window of the video (:func:`vau.rollout.look.replies_with_looks`):
        the engine stops each turn at ``</look>`` and asks ``next_inputs`` for the conversation that follows.
        ``agree``: whether any process goes on to another turn (sharded generation; None: this process alone)."""
        return replies_with_looks(self, inputs, max_new_tokens, durations, next_inputs, settings, agree=agree)

    def sample_with_looks(self, prompt: dict[str, torch.Tensor], n: int, max_new_tokens: int, durations,
                          next_inputs: NextInputs, settings: LookSettings, agree=None, **sampling) -> LookTurns:
        """GRPO's ``n`` sampled multi-turn replies of every prompt (``n`` consecutive rows each), each allowed to look
        again (:func:`vau.rollout.look.turns_with_looks`); ``durations`` and the rows ``next_inputs`` is asked for
        count those ``B * n`` rows. The first turn continues each prompt ``n`` times (``generate(times=n)``: one
        prefill per prompt under the shared-prompt path); the conversations part after it, so each later turn is
        generated from its own rendered conversation."""
        if getattr(self.module, "shared_prompt", True):
            return turns_with_looks(self, prompt, max_new_tokens, durations, next_inputs, settings, sampling=sampling,
                                    times=n, agree=agree)
        repeated = self.module.backbone.repeat_vision(prompt, n)
        return turns_with_looks(self, repeated, max_new_tokens, durations, next_inputs, settings, sampling=sampling,
                                agree=agree)
