"""Multi-turn GRPO rollouts that may look again (``module.generation.look_again`` during GRPO; issue 20).

A rollout asks the engine for G sampled replies per prompt that may stop at ``<look>[start, end]</look>``, be shown
that window's frames as a new user turn and go on (:func:`vau.rollout.look.turns_with_looks`). The loss then sees
each reply as the whole conversation the processor renders for it (:meth:`vau.datamodules.dataset.VAUDataset.look_item`:
the first video, the first turn, the looked-at frames as a second video, the look turn's text, the last turn), and
takes the log-probs of every token in **one pass** over it. Only the tokens the policy wrote count: each turn's
text and the end-of-sequence token the last turn ended with. Video tokens, the look turn's text and the end-of-turn
token the chat template writes after a turn stopped at ``</look>`` are masked out of the loss and the KL.

A conversation starts with its example's first prompt, token for token (checked per reply), so the shared-prompt
path applies to the loss passes as to single-turn steps: the first video and prompt run once per group and their KV
cache serves the G conversations, whose looked-at frames enter with the rest of the conversation. The first turn is
generated from one prefill per prompt too; a later turn is generated from each reply's own rendered conversation
(they part after the first turn). The replies are re-tokenized from their text when the conversation is rendered (the
tokens a chat template puts around a turn are only known after rendering), which for the byte-level BPE tokenizers of
the supported families gives back the sampled ids except where a sampled split is not the canonical one.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from vau.datamodules.encoding import IGNORE_INDEX, model_inputs, right_pad
from vau.modules.shared_prompt import completion_logits
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
                                             self.look_settings, agree=self.look_turns_agree(), **self.sampling())

    def train_dataset(self):
        return self.trainer.datamodule.datasets["train"]

    def look_rollout_fields(self, batch: dict[str, Any], turns, memo: dict | None = None) -> dict[str, Any]:
        """The :class:`vau.modules.grpo.Rollout` fields of ``turns``. Each reply's conversation, rendered by the
        processor, is laid out as its example's first prompt (the batch's rows, left-padded) followed by what came
        after it (right-padded): ``completion_ids`` is that part, ``mask`` the tokens the policy wrote in it (module
        doc), ``conversation`` the whole layout's model inputs with their position ids, ``looked_vision`` the
        looked-at windows' vision inputs alone (None when the backbone cannot split them); plus the joined texts and
        the looks."""
        dataset, G = self.train_dataset(), self.G
        frames = self.look_settings.frames
        ends = torch.tensor(sorted(set(self.backbone.eos_token_ids)))
        prompt = model_inputs(batch, prompt_only=True)
        lengths = batch["prompt_attention_mask"].sum(dim=1).tolist()
        aligned = list(batch.get("aligned_keys", ()))
        rows, looked = [], []
        for row, replies in enumerate(turns.replies):
            example = row // G
            key, sample = batch["keys"][example], batch["samples"][example]
            item = dataset.look_item(key, sample, turns.shown[row], frames, target=replies[-1], memo=memo)
            if "bad" in item:  # read a moment ago for the prompt: a video that vanishes mid-step is not skippable
                raise RuntimeError(f"look rollout: {item['bad']['video']} could not be read again "
                                   f"({item['bad']['error']}) while rendering reply {row} of this step")
            start = int(lengths[example])
            first = batch["prompt_input_ids"][example, batch["prompt_input_ids"].shape[1] - start:]
            if not torch.equal(item["prompt_ids"][:start].to(first.device), first):
                raise RuntimeError(f"look rollout: reply {row}'s conversation does not start with its first prompt as "
                                   f"the batch rendered it; {type(self.backbone).__name__}'s chat template re-renders "
                                   f"earlier turns, which a multi-turn rollout cannot train on")
            target = item["target_ids"] if turns.ended[row] else item["target_ids"][:-1]  # no end token was written
            labels = item.get("prompt_labels", torch.full_like(item["prompt_ids"], IGNORE_INDEX))[start:].clone()
            labels[torch.isin(labels, ends)] = IGNORE_INDEX  # the end of a turn stopped at </look>: the template's
            rows.append({"ids": torch.cat([item["prompt_ids"][start:], target]),
                         "labels": torch.cat([labels, target]),
                         "aligned": {k: torch.cat([item["aligned"][k][start:], torch.zeros_like(target)]) for k in aligned},
                         "vision": item["vision"]})
            looked.append(self.backbone.later_videos(item["vision"]))
        ids = right_pad([r["ids"] for r in rows], self.backbone.pad_id)
        repeated = {k: prompt[k].repeat_interleave(G, dim=0) for k in self.backbone.text_keys if k in prompt}
        conversation = self.backbone.append_text(repeated, ids, right_pad([torch.ones_like(r["ids"]) for r in rows], 0))
        for k in aligned:
            conversation[k][:, prompt["input_ids"].shape[1]:] = right_pad([r["aligned"][k] for r in rows], 0)
        vision_keys = [k for k in prompt if k not in self.backbone.text_keys]
        conversation.update({k: torch.cat([torch.as_tensor(r["vision"][k]) for r in rows]) for k in vision_keys})
        conversation = move_data_to_device(conversation, self.device)
        conversation["position_ids"] = self.backbone.positions_of(self.model, conversation)
        looked_vision = None
        if all(v is not None for v in looked):
            looked_vision = {k: torch.cat([v[k] for v in looked if k in v]) for k in {k for v in looked for k in v}}
            looked_vision = move_data_to_device(looked_vision, self.device)
        labels = right_pad([r["labels"] for r in rows], IGNORE_INDEX).to(self.device)
        truncated = torch.tensor([not ended and not replies[-1].rstrip().endswith(LOOK_END)
                                  for ended, replies in zip(turns.ended, turns.replies)], dtype=torch.bool)
        return {
            "conversation": conversation,
            "looked_vision": looked_vision,
            "completion_ids": conversation["input_ids"][:, prompt["input_ids"].shape[1]:],
            "mask": (labels != IGNORE_INDEX).float(),
            "truncated": truncated.to(self.device),
            "texts": [join_turns(replies) for replies in turns.replies],
            "looks": turns.looks,
        }

    def conversation_logits(self, model: torch.nn.Module, rollout) -> torch.Tensor:
        """Logits (N, T, V) predicting each of the rollout's ``completion_ids`` from its conversation. Shared-prompt
        path: each example's first prompt runs once and its KV cache serves its G conversations
        (:func:`vau.modules.shared_prompt.completion_logits` with the looked-at frames as the completions' vision);
        otherwise one forward over every whole conversation (the last T + 1 positions kept)."""
        conversation, T = rollout.conversation, rollout.completion_ids.shape[1]
        # Under FSDP2 on several processes a forward is a collective, and only ranks with looks would run the vision
        # tower on the rest of the conversation: there every whole conversation runs (every rank runs the tower once).
        if (self.shared_prompt and rollout.looked_vision is not None and self.look_turns_agree() is None
                and not (torch.is_grad_enabled() and self._checkpointing())):
            length = rollout.prompt["input_ids"].shape[1]
            return completion_logits(model, self.backbone, rollout.prompt, rollout.completion_ids,
                                     conversation["attention_mask"][:, length:], self.G,
                                     completion_vision=rollout.looked_vision or None,
                                     positions=conversation["position_ids"])
        return model(**conversation, logits_to_keep=T + 1, use_cache=False).logits[:, :-1]

    @staticmethod
    def looked_frames(looks: list[list[dict[str, Any]]]) -> list[int]:
        """Frames shown to each reply over its looks."""
        return [sum(len(look["frame_times"]) for look in row) for row in looks]
