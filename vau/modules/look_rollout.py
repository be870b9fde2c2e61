"""Multi-turn GRPO rollouts that may look again (``module.generation.look_again`` during GRPO; issue 20).

A rollout asks the engine for G sampled replies per prompt that may stop at ``<look>[start, end]</look>``, be shown
that window's frames as a new user turn and go on (:func:`vau.rollout.look.turns_with_looks`). The loss then sees
each reply as the whole conversation the processor renders for it (:meth:`vau.datamodules.dataset.VAUDataset.look_item`:
the first video, the first turn, the looked-at frames as a second video, the look turn's text, the last turn), and
takes the log-probs of every token in **one forward** over it. Only the tokens the policy wrote count: each turn's
text and the end-of-sequence token the last turn ended with. Video tokens, the look turn's text and the end-of-turn
token the chat template writes after a turn stopped at ``</look>`` are masked out of the loss and the KL.

What this costs and does not do yet (docs/experiments.md): the turns are generated from the prompt repeated G times
and the loss's forward runs the whole conversation per reply, so the shared-prompt saving does not apply to look
steps; the replies are re-tokenized from their text when the conversation is rendered (the tokens a chat template
puts around a turn are only known after rendering), which for the byte-level BPE tokenizers of the supported
families gives back the sampled ids except where a sampled split is not the canonical one.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from vau.datamodules.encoding import IGNORE_INDEX, Collator, model_inputs
from vau.parsing import LOOK_END
from vau.tasks.base import join_turns


class LookRollouts:
    """GRPO's rollouts with looks (mixed into :class:`vau.modules.grpo.GRPOModule`)."""

    def look_turns(self, batch: dict[str, Any], memo: dict | None = None):
        """G sampled multi-turn replies of every prompt of ``batch`` (B*G rows, G consecutive per prompt), as the
        engine returns them (:class:`vau.rollout.look.LookTurns`). ``memo`` keeps the clips decoded for the looks, for
        :meth:`look_rollout_fields` to render the same conversations without decoding them again."""
        prompt = model_inputs(batch, prompt_only=True)
        G = self.G
        durations = [d for d in batch["durations"] for _ in range(G)]
        environment = self._look_inputs(batch, self.train_dataset(), group=G, memo=memo)
        return self.engine.sample_with_looks(prompt, G, int(self.cfg.max_new_tokens), durations, environment,
                                             self.look_settings, **self.sampling())

    def train_dataset(self):
        return self.trainer.datamodule.datasets["train"]

    def look_rollout_fields(self, batch: dict[str, Any], turns, memo: dict | None = None) -> dict[str, Any]:
        """The :class:`vau.modules.grpo.Rollout` fields of ``turns``: per reply its rendered conversation
        (``conversation``: teacher-forced model inputs), ``completion_ids`` its tokens from the first one any reply
        wrote, ``mask`` the tokens the policy wrote among them (module doc), the joined texts and the looks."""
        dataset, G = self.train_dataset(), self.G
        frames = self.look_settings.frames
        ends = set(self.backbone.eos_token_ids)
        items = []
        for row, replies in enumerate(turns.replies):
            key, sample = batch["keys"][row // G], batch["samples"][row // G]
            item = dataset.look_item(key, sample, turns.shown[row], frames, target=replies[-1], memo=memo)
            if "bad" in item:  # read a moment ago for the prompt: a video that vanishes mid-step is not skippable
                raise RuntimeError(f"look rollout: {item['bad']['video']} could not be read again "
                                   f"({item['bad']['error']}) while rendering reply {row} of this step")
            if "prompt_labels" in item:  # the end of a turn stopped at </look> is the template's, not the policy's
                labels = item["prompt_labels"].clone()
                labels[torch.isin(labels, torch.tensor(sorted(ends)))] = IGNORE_INDEX
                item["prompt_labels"] = labels
            if not turns.ended[row]:  # stopped at </look> or at the length limit: no end token was written
                item["target_ids"] = item["target_ids"][:-1]
            items.append(item)
        collated = move_data_to_device(Collator(self.backbone.pad_id)(items), self.device)
        labels = collated["labels"]
        written = labels != IGNORE_INDEX
        first = int(written.any(dim=0).float().argmax()) if written.any() else labels.shape[1] - 1
        truncated = torch.tensor([not ended and not replies[-1].rstrip().endswith(LOOK_END)
                                  for ended, replies in zip(turns.ended, turns.replies)], dtype=torch.bool)
        return {
            "conversation": model_inputs(collated),
            "completion_ids": collated["input_ids"][:, first:],
            "mask": written[:, first:].float(),
            "truncated": truncated.to(self.device),
            "texts": [join_turns(replies) for replies in turns.replies],
            "looks": turns.looks,
        }

    def conversation_logits(self, model: torch.nn.Module, rollout) -> torch.Tensor:
        """Logits (N, T, V) predicting each of the rollout's ``completion_ids`` from its whole conversation, one
        forward (the last T + 1 positions kept)."""
        T = rollout.completion_ids.shape[1]
        return model(**rollout.conversation, logits_to_keep=T + 1, use_cache=False).logits[:, :-1]

    @staticmethod
    def looked_frames(looks: list[list[dict[str, Any]]]) -> list[int]:
        """Frames shown to each reply over its looks."""
        return [sum(len(look["frame_times"]) for look in row) for row in looks]
