"""The ``hf`` rollout engine: the policy's own Hugging Face ``generate``, in the training process.

GRPO's two paths live here: *shared prompt* (each prompt prefilled once and continued G times,
:func:`vau.modules.shared_prompt.generate_shared`; a frozen vision tower encoded once per step) and *repeated
prompt* (the prompt and its vision inputs repeated G times, one ordinary ``generate``). Evaluation replies are
greedy; two-pass self-correction continues each conversation with a second user turn (:meth:`HFEngine.follow_up`).
"""

from __future__ import annotations

from typing import Any

import torch

from vau.modules.shared_prompt import generate_shared
from vau.registry import ROLLOUT_ENGINES
from vau.rollout.engine import RolloutEngine


@ROLLOUT_ENGINES.register("hf")
class HFEngine(RolloutEngine):
    """The policy's own ``generate`` (shared-prompt or repeated-prompt GRPO rollouts, greedy evaluation)."""

    @torch.no_grad()
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, times: int = 1,
                 encoded_vision: dict[str, Any] | None = None, **sampling) -> torch.Tensor:
        """Completion token ids (B * times, T), prompt removed; padded with the pad id after EOS.

        Generation stops at any of the backbone's ``eos_token_ids`` and never samples its ``suppressed_token_ids``
        (both can be overridden through ``sampling``). With ``times`` > 1 every prompt is prefilled once and
        continued ``times`` times, its vision outputs taken from ``encoded_vision`` when given.
        """
        module, backbone = self.module, self.module.backbone
        prompt_len = inputs["input_ids"].shape[1]
        sampling.setdefault("eos_token_id", backbone.eos_token_ids)
        sampling.setdefault("suppress_tokens", backbone.suppressed_token_ids)
        was_training = module.model.training
        module.model.eval()
        try:
            with module.generation_context() as sync:
                if times > 1:
                    return generate_shared(module.model, backbone, inputs, times, encoded_vision,
                                           max_new_tokens=max_new_tokens, pad_token_id=backbone.pad_id,
                                           **sync, **sampling)
                out = module.model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=backbone.pad_id,
                                            **sync, **sampling)
        finally:
            module.model.train(was_training)
        return out[:, prompt_len:]

    def sample(self, prompt: dict[str, torch.Tensor], n: int, max_new_tokens: int,
               **sampling) -> tuple[torch.Tensor, dict | None, dict | None]:
        """Shared-prompt path unless the module turned it off (``module.grpo.shared_prompt: false``)."""
        module = self.module
        encoded = repeated = None
        if getattr(module, "shared_prompt", True):
            # Each prompt once: generation prefills it once; a frozen vision tower runs once for the whole step.
            if module.vision_frozen():
                # Under FSDP2 the vision tower's weights are gathered for this call like for a generate().
                with torch.no_grad(), module.generation_context():
                    encoded = module.backbone.encode_vision(module.model, prompt)
            ids = self.generate(prompt, max_new_tokens, times=n, encoded_vision=encoded, **sampling)
        else:
            repeated = module.backbone.repeat_vision(prompt, n)
            ids = self.generate(repeated, max_new_tokens, **sampling)
        return ids, encoded, repeated

    def follow_up(self, inputs: dict[str, torch.Tensor], first_ids: torch.Tensor, text: str) -> dict[str, torch.Tensor]:
        """Prompt inputs that continue each conversation after its first reply with the user turn ``text``.

        Each row becomes prompt (without its padding) + first reply (up to its closing token) + the chat template's
        follow-up turn (:meth:`vau.backbones.base.Backbone.follow_up_ids`), left-padded again. The vision inputs are
        reused as they are: the video tokens of each row are unchanged, only text follows them.
        """
        backbone = self.module.backbone
        follow = torch.tensor(backbone.follow_up_ids(text), dtype=torch.long)
        stops = torch.tensor(sorted({*backbone.eos_token_ids, backbone.pad_id}), device=first_ids.device)
        mask = inputs["attention_mask"].bool()
        aligned = [k for k in backbone.text_aligned_keys if k in inputs]
        rows, extra = [], {k: [] for k in aligned}
        for row in range(first_ids.shape[0]):
            reply = first_ids[row]
            stop = torch.isin(reply, stops).nonzero()
            reply = reply[: int(stop[0]) if len(stop) else len(reply)].cpu()
            prompt = inputs["input_ids"][row][mask[row]].cpu()
            rows.append(torch.cat([prompt, reply, follow]))
            for key in aligned:  # the appended reply and turn are plain text: zeros
                kept = inputs[key][row][mask[row]].cpu()
                extra[key].append(torch.cat([kept, torch.zeros(len(reply) + len(follow), dtype=kept.dtype)]))
        width = max(len(r) for r in rows)
        out = {k: v for k, v in inputs.items() if k not in backbone.text_keys}
        out["input_ids"] = torch.stack([torch.cat([r.new_full((width - len(r),), backbone.pad_id), r]) for r in rows])
        out["attention_mask"] = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long),
                                                        torch.ones(len(r), dtype=torch.long)]) for r in rows])
        for key, values in extra.items():
            out[key] = torch.stack([torch.cat([t.new_zeros(width - len(t)), t]) for t in values])
        device = inputs["input_ids"].device
        return {k: v.to(device) if isinstance(v, torch.Tensor) and k in backbone.text_keys else v for k, v in out.items()}
