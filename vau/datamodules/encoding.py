"""Turn one (sample, decoded clip) into model tensors, and a list of those into a left-padded batch."""

from __future__ import annotations

from typing import Any

import torch

from vau.datamodules.video import DecodedClip
from vau.tasks import Sample, Task, get_task
from vau.tasks.base import LOOK_INSTRUCTION

IGNORE_INDEX = -100


class SampleEncoder:
    """Builds prompt tokens + vision tensors with the backbone's own processor, and the target tokens.

    The prompt and target are tokenized separately, so the boundary between them is exact and the loss
    mask never depends on how BPE merges across it. Each sample is encoded with its own task's spec (``spec``
    is only a default), so one encoder serves the multi-task ``mixed`` view.

    Args:
        backbone: the :class:`vau.backbones.base.Backbone`: its processor, its chat message layout
            (``chat_messages``) and the id that closes a reply (``end_of_turn_id``, appended to every target).
        spec: the default task spec (None: each sample's own task).
        system_prompt: optional system message for every prompt.
        look_instruction: offer a second look in every prompt (:data:`vau.tasks.base.LOOK_INSTRUCTION`,
            ``generation.look_again``).
    """

    def __init__(self, backbone, spec: Task | None = None, system_prompt: str | None = None,
                 look_instruction: bool = False) -> None:
        if not hasattr(backbone, "end_of_turn_id"):
            raise TypeError(f"SampleEncoder takes the Backbone (processor, chat format, end-of-turn id), not a "
                            f"{type(backbone).__name__}: pass `backbone` where `backbone.processor` was passed")
        self.backbone = backbone
        self.processor = backbone.processor
        self.spec = spec
        self.system_prompt = system_prompt
        self.eos_id = backbone.end_of_turn_id
        self.look_instruction = bool(look_instruction)

    def spec_for(self, sample: Sample) -> Task:
        return self.spec if self.spec is not None and self.spec.owns(sample) else get_task(sample.task)

    def messages(self, sample: Sample) -> list[dict]:
        prompt = self.spec_for(sample).prompt(sample)
        if self.look_instruction:
            prompt = f"{prompt} {LOOK_INSTRUCTION}"
        return self.backbone.chat_messages(prompt, self.system_prompt)

    def _render(self, messages: list[dict], clips: list[DecodedClip]):
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.processor(text=[text], videos=[c.frames for c in clips], video_metadata=[c.metadata() for c in clips],
                              return_tensors="pt", do_sample_frames=False)

    def __call__(self, sample: Sample, clip: DecodedClip, with_target: bool = True) -> dict[str, Any]:
        item = self._item(sample, self._render(self.messages(sample), [clip]), clip)
        if with_target:
            item["target_ids"] = self._target_ids(self.spec_for(sample).target(sample))
        return item

    def _item(self, sample: Sample, enc, clip: DecodedClip) -> dict[str, Any]:
        """The encoded prompt ``enc`` of ``sample`` as an item without a target; ``clip`` is its first video."""
        return {"sample": sample, "prompt_ids": enc["input_ids"][0],
                # per-token keys besides the ids (Backbone.text_aligned_keys), and the vision inputs
                "aligned": {k: enc[k][0] for k in self.backbone.text_aligned_keys if k in enc},
                "vision": {k: v for k, v in enc.items() if k not in self.backbone.text_keys},
                "duration": clip.total_frames / clip.fps,  # seconds; duration-aware rewards need it
                "frame_times": [round(float(t), 3) for t in clip.timestamps],  # what the model saw (predictions)
                "target_ids": torch.zeros(0, dtype=torch.long)}

    def _target_ids(self, text: str) -> torch.Tensor:
        tokens = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor([*tokens, self.eos_id], dtype=torch.long)

    def conversation(self, sample: Sample, clip: DecodedClip, turns: list[tuple[str, DecodedClip, str]],
                     target: str | None = None) -> dict[str, Any]:
        """The conversation of ``sample`` continued after each of its ``turns`` (the model's reply, the clip it asked
        to see again, the user text shown with it), rendered whole by the processor with every clip as a video of its
        own, so tokens, vision inputs and positions are the processor's own for that conversation
        (``generation.look_again``). Without ``target`` it is a prompt; with one (SFT of look chains) the replies of
        ``turns`` are trained on too: ``prompt_labels`` marks each reply's tokens, as rendered, and its closing
        end-of-turn token, and ``target`` (+ end of turn) follows the prompt."""
        messages = self.messages(sample)
        for reply, _, text in turns:
            messages = messages + self.backbone.look_messages(reply, text)
        item = self._item(sample, self._render(messages, [clip, *(look for _, look, _ in turns)]), clip)
        if target is not None:
            item["prompt_labels"] = self._reply_labels(item["prompt_ids"], len(turns))
            item["target_ids"] = self._target_ids(target)
        return item

    def _reply_labels(self, ids: torch.Tensor, replies: int) -> torch.Tensor:
        """Labels of a rendered conversation: the tokens of its first ``replies`` assistant turns (each from the end
        of the generation prompt that opens it to its end-of-turn token, included), ``IGNORE_INDEX`` elsewhere. The
        generation prompt is found as the tokens the template adds after the last user turn (the rendered prompt's
        tail after its last end-of-turn token), so no template is assumed."""
        ends = (ids == self.eos_id).nonzero().flatten().tolist()
        opener = ids[ends[-1] + 1:].tolist() if ends else []
        labels = torch.full_like(ids, IGNORE_INDEX)
        width, found, at = len(opener), 0, 0
        while found < replies and width:
            found_at = next((i for i in range(at, len(ids) - width + 1) if ids[i:i + width].tolist() == opener), None)
            if found_at is None:
                break
            start = found_at + width
            close = next((e for e in ends if e >= start), None)
            if close is None:  # the generation prompt at the end opens no reply yet
                break
            labels[start:close + 1] = ids[start:close + 1]
            found, at = found + 1, close + 1
        if found != replies:
            raise ValueError(f"{type(self.backbone).__name__}: found {found} of {replies} assistant replies in the "
                             f"rendered conversation; override Backbone.look_messages for this chat template")
        return labels


class SampleList:
    """The batch's :class:`Sample` objects. Deliberately not a ``Sequence``: Lightning's device transfer
    walks sequences and rejects frozen dataclasses, and these never go to a device."""

    __slots__ = ("items",)

    def __init__(self, items: list[Sample]) -> None:
        self.items = list(items)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __repr__(self) -> str:
        return f"SampleList({len(self.items)} samples)"


def right_pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    """``seqs`` as one (n, longest) tensor, each padded with ``value`` after its end."""
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


def _left_pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=seqs[0].dtype if seqs else torch.long)
    for row, seq in enumerate(seqs):
        if len(seq):
            out[row, width - len(seq):] = seq
    return out


class Collator:
    """Left-pads a list of encoded items into one batch.

    The batch holds two views of the same examples:
    - ``input_ids`` / ``attention_mask`` / ``labels``: prompt + target, for teacher-forced loss; labels are
      ``-100`` on padding, prompt and video positions, so only target tokens (and the closing EOS) count.
    - ``prompt_input_ids`` / ``prompt_attention_mask``: the prompt alone, for generation.
    Vision tensors are concatenated along dim 0 (the processor's own layout for several videos).
    Items that are bad videos (``{"bad": ...}``) are left out and listed under ``bad``.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if "bad" not in it]
        batch: dict[str, Any] = {"bad": [it["bad"] for it in items if "bad" in it], "samples": SampleList([]), "size": len(good)}
        if not good:
            return batch
        full = [torch.cat([it["prompt_ids"], it["target_ids"]]) for it in good]
        batch["input_ids"] = _left_pad(full, self.pad_id)
        batch["attention_mask"] = _left_pad([torch.ones_like(s) for s in full], 0)
        # prompt_labels: replies inside the prompt that are trained on too (a look conversation's earlier turns)
        labels = [torch.cat([it.get("prompt_labels", torch.full_like(it["prompt_ids"], IGNORE_INDEX)), it["target_ids"]])
                  for it in good]
        batch["labels"] = _left_pad(labels, IGNORE_INDEX)
        batch["prompt_input_ids"] = _left_pad([it["prompt_ids"] for it in good], self.pad_id)
        batch["prompt_attention_mask"] = _left_pad([torch.ones_like(it["prompt_ids"]) for it in good], 0)
        batch["aligned_keys"] = list(good[0].get("aligned") or {})  # Backbone.text_aligned_keys the processor gave
        for key in batch["aligned_keys"]:  # laid out per token: padded like the ids, zeros (text) under the target
            per_item = [it["aligned"][key] for it in good]
            batch[key] = _left_pad([torch.cat([m, torch.zeros_like(it["target_ids"])]) for m, it in zip(per_item, good)], 0)
            batch[f"prompt_{key}"] = _left_pad(per_item, 0)
        batch["vision"] = {key: torch.cat([torch.as_tensor(it["vision"][key]) for it in good]) for key in good[0]["vision"]}
        batch["samples"] = SampleList([it["sample"] for it in good])
        batch["durations"] = [float(it.get("duration", float("nan"))) for it in good]
        batch["frame_times"] = [list(it.get("frame_times", ())) for it in good]
        batch["keys"] = [it.get("key") for it in good]  # (epoch, index) in the dataset, None for items built elsewhere
        return batch


def model_inputs(batch: dict[str, Any], prompt_only: bool = False) -> dict[str, torch.Tensor]:
    """Keyword arguments for the model's forward/generate from a collated batch."""
    prefix = "prompt_" if prompt_only else ""
    inputs = {"input_ids": batch[f"{prefix}input_ids"], "attention_mask": batch[f"{prefix}attention_mask"]}
    for key in batch.get("aligned_keys", ()):
        inputs[key] = batch[f"{prefix}{key}"]
    inputs.update(batch["vision"])
    return inputs
