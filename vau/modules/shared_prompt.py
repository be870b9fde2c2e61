"""Shared-prompt GRPO passes: each prompt (video + text) is computed once per pass, not once per completion.

A GRPO step scores G completions of every prompt. Repeating the prompt G times (``repeat_vision``) makes the vision
tower and the prompt's decoder layers run G times in generation, in the policy pass (and its backward) and in the
reference pass, although the G copies are identical. Here the prompt runs once with a KV cache, the cache is
repeated per completion (``repeat_interleave`` is differentiable, so the policy's gradient flows back through the
shared prefix, summed over the G completions as in the repeated computation), and the completions run on top of it.
Position ids are computed by the backbone for the whole (prompt + completion) sequence, exactly as the model's own
forward would, so every per-token log-prob equals the repeated computation up to float rounding (Prefix Grouper,
arXiv 2506.05433, shows the same identity).

When the vision tower is frozen (LoRA/QLoRA without vision adapters), its output is computed once per step
(:func:`encode_vision`) and handed to the generation, the policy, the reference and every ``num_iterations`` pass.

Example (inside a GRPO step)::

    ids = generate_shared(model, backbone, prompt, G, max_new_tokens=32, do_sample=True)
    logits = completion_logits(model, backbone, prompt, ids, mask, G)     # (B*G, T, vocab)
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def _cache():
    from transformers import DynamicCache

    return DynamicCache()


def _cache_key(model) -> str:
    """The keyword a model's forward and ``generate`` take the KV cache by: transformers 5.2x renamed
    ``past_key_values`` to ``cache`` (the old name still works there, with a deprecation warning)."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _with_vision(prompt: dict[str, Any], encoded: dict[str, Any] | None) -> dict[str, Any]:
    """Prompt inputs with pixels replaced by precomputed vision outputs when there are some."""
    if not encoded:
        return dict(prompt)
    kept = {k: v for k, v in prompt.items() if k not in encoded["replaces"]}
    kept.update(encoded["kwargs"])
    return kept


def completion_logits(model, backbone, prompt: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor, times: int, encoded: dict[str, Any] | None = None,
                      completion_vision: dict[str, torch.Tensor] | None = None,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits predicting each completion token: the prompt once, its cache shared by its ``times`` completions.

    Args:
        model: the policy or reference model (PEFT-wrapped or not).
        backbone: the :class:`vau.backbones.base.Backbone` (position ids, vision inputs).
        prompt: prompt inputs of B examples (left-padded ids, attention mask, vision tensors).
        completion_ids: (B * times, T) completions, ``times`` consecutive rows per prompt.
        completion_mask: (B * times, T) 1 up to and including each completion's end, 0 after.
        times: completions per prompt (G).
        encoded: precomputed vision outputs (``backbone.encode_vision``, frozen vision tower), or None.
        completion_vision: vision inputs of videos inside the completions (a look conversation's looked-at windows,
            in row order), or None for text completions.
        positions: position ids of the whole (prompt repeated ``times`` times + completion) layout
            (``backbone.positions_of``); computed here for text completions when None.

    Returns:
        (B * times, T, vocab) logits; row r, column t predicts ``completion_ids[r, t]`` (the repeated forward's
        ``logits[:, L - 1 : L + T - 1]``).
    """
    length, steps = prompt["input_ids"].shape[1], completion_ids.shape[1]
    if positions is None:
        positions = backbone.position_ids(model, prompt, times, completion_ids, completion_mask)
    cache, key = _cache(), _cache_key(model)
    head = model(**_with_vision(prompt, encoded), **{key: cache}, use_cache=True, logits_to_keep=1,
                 position_ids=backbone.rows_of_positions(positions, slice(None, None, times), slice(0, length)))
    first = head.logits[:, -1:].repeat_interleave(times, dim=0)
    if steps == 1:
        return first
    if cache.get_seq_length() != length:
        raise RuntimeError("the prompt pass kept no KV cache (gradient checkpointing drops it while training); "
                           "the repeated prompt path must be used with checkpointing")
    cache.batch_repeat_interleave(times)
    mask = torch.cat([prompt["attention_mask"].repeat_interleave(times, dim=0),
                      completion_mask[:, :-1].to(prompt["attention_mask"].dtype)], dim=1)
    # The last completion token predicts nothing that is scored, so it is not fed.
    tail = model(input_ids=completion_ids[:, :-1], attention_mask=mask, **(completion_vision or {}), **{key: cache},
                 use_cache=True,
                 position_ids=backbone.rows_of_positions(positions, slice(None), slice(length, length + steps - 1)))
    return torch.cat([first, tail.logits], dim=1)


@torch.no_grad()
def generate_shared(model, backbone, prompt: dict[str, torch.Tensor], times: int, encoded: dict[str, Any] | None = None,
                    **generate_kwargs) -> torch.Tensor:
    """``times`` sampled completions per prompt after one prefill of each prompt; returns (B * times, T) ids.

    The prompt minus its last token is prefilled once (vision included) and its cache repeated; ``generate`` then
    continues every row from the last prompt token, so the vision tower and the prompt run once per prompt.
    """
    length = prompt["input_ids"].shape[1]
    positions = backbone.position_ids(model, prompt, times)
    head = {k: (v[:, :-1] if k in backbone.text_keys else v) for k, v in _with_vision(prompt, encoded).items()}
    cache, key = _cache(), _cache_key(model)
    model(**head, **{key: cache}, use_cache=True, logits_to_keep=1,
          position_ids=backbone.rows_of_positions(positions, slice(None, None, times), slice(0, length - 1)))
    cache.batch_repeat_interleave(times)
    backbone.prepare_cached_generation(model, prompt, times)
    text = {k: v.repeat_interleave(times, dim=0) for k, v in prompt.items() if k in backbone.text_keys}
    out = model.generate(**text, **{key: cache}, **generate_kwargs)
    if hasattr(out, "sequences"):  # return_dict_in_generate=True: the output with the prompt cut from its sequences
        out.sequences = out.sequences[:, length:]
        return out
    return out[:, length:]
