"""Look again (``module.generation.look_again``): a reply may ask to see a moment of the video again.

The prompt offers ``<look>[start, end]</look>`` (seconds) after the answer (:data:`vau.tasks.base.LOOK_INSTRUCTION`).
Generation stops right after a ``</look>``; the window is read with :func:`vau.parsing.look_request` (clamped to the
video, widened to ``look_min_seconds``, or refused with a counted reason); the caller's environment decodes
``look_frames`` frames of it (true timestamps) and renders the whole conversation again with the processor — the
first video, the reply, then a user turn with the looked-at frames as a second video and
:func:`vau.tasks.base.look_turn` — and generation goes on from there (``<reflect>…</reflect><think>…</think>
<answer>…</answer>``). The reply a caller gets is the turns joined by newlines: its first ``<answer>`` is the initial
answer and its last the final one, as in a reflect reply.

Why re-render instead of appending tokens: the processor alone knows how a second video is laid out (Qwen3-VL writes
its timestamps as text, Qwen2.5-VL continues its M-RoPE positions after it), so a conversation rendered by it is the
conversation a model trained on such chats expects. Evaluation pays one more prefill per look for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from vau.parsing import LOOK_END, cut_after, extract_tag, look_request
from vau.tasks.base import join_turns, look_turn

#: Why a look was not shown besides :data:`vau.parsing.LOOK_REASONS`: the frame budget was spent, or the video could
#: not be read again.
LOOK_REFUSALS = ("budget", "unreadable")


@dataclass(frozen=True)
class LookSettings:
    """``module.generation``'s look keys (vau/schema.py)."""

    frames: int = 8
    max_looks: int = 1
    frame_budget: int | None = None
    min_seconds: float = 1.0

    @classmethod
    def from_cfg(cls, generation) -> LookSettings:
        get = generation.get
        settings = cls(frames=int(get("look_frames", 8)), max_looks=int(get("max_looks", 1)),
                       frame_budget=None if get("look_frame_budget") is None else int(get("look_frame_budget")),
                       min_seconds=float(get("look_min_seconds", 1.0)))
        if settings.frames < 1 or settings.max_looks < 1 or settings.min_seconds < 0:
            raise ValueError(f"module.generation: look_frames={settings.frames}, max_looks={settings.max_looks}, "
                             f"look_min_seconds={settings.min_seconds}: need >= 1 frame, >= 1 look, seconds >= 0")
        if settings.frame_budget is not None and settings.frame_budget < settings.frames:
            raise ValueError(f"module.generation.look_frame_budget={settings.frame_budget} is below look_frames="
                             f"{settings.frames}: no look could be shown")
        return settings

    @property
    def budget(self) -> int:
        return self.max_looks * self.frames if self.frame_budget is None else self.frame_budget


class StopAfterText(StoppingCriteria):
    """Stops each row of a ``generate`` once its completion holds ``text`` (decoded, so however it was tokenized).

    Only the last ``window`` tokens are decoded per step: ``text`` is short, and the stop happens the step it appears.
    """

    def __init__(self, tokenizer, text: str, prompt_length: int, window: int = 32) -> None:
        self.tokenizer, self.text, self.prompt_length, self.window = tokenizer, text, int(prompt_length), int(window)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([self.text in tail for tail in tails], dtype=torch.bool, device=input_ids.device)


#: ``next_inputs(rows, turns)``: model inputs (prompt only) that continue the conversations of batch rows ``rows``
#: after ``turns[i]`` = [(reply, window, user text), ...], plus each row's looked-at frame times per turn (None for a
#: row whose video could not be read again; that row's inputs are left out, in order).
NextInputs = Callable[[list[int], list[list[tuple[str, tuple[float, float], str]]]],
                      tuple[dict[str, torch.Tensor] | None, list[list[list[float]] | None]]]


def replies_with_looks(engine, inputs: dict[str, torch.Tensor], max_new_tokens: int, durations: Sequence[float],
                       next_inputs: NextInputs, settings: LookSettings, agree: Callable[[bool], bool] | None = None
                       ) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Greedy replies of every prompt, each allowed up to ``settings.max_looks`` looks (module doc).

    Returns:
        (replies, looks): per row the joined reply and a list of its look requests, each ``{"requested": raw text of
        the <look> block's window, "window": [start, end] shown or None, "reason": why (vau.parsing.LOOK_REASONS or
        LOOK_REFUSALS), "frame_times": the looked-at frames' times}``.
    """
    turns = turns_with_looks(engine, inputs, max_new_tokens, durations, next_inputs, settings, agree=agree)
    return [join_turns(replies) for replies in turns.replies], turns.looks


@dataclass(frozen=True)
class LookTurns:
    """The turns of replies that may look again, per row: ``replies`` (each turn's text; a turn that looked ends with
    its ``</look>``), ``looks`` (the requests, as :func:`replies_with_looks` returns them), ``shown`` (reply, window,
    user text) of every look that was shown, i.e. the conversation before the last turn, and ``ended``: whether the
    last turn ended with an end-of-sequence token the policy wrote (not stopped at ``</look>`` or at the length
    limit)."""

    replies: list[list[str]]
    looks: list[list[dict[str, Any]]]
    shown: list[list[tuple[str, tuple[float, float], str]]]
    ended: list[bool]


def turns_with_looks(engine, inputs: dict[str, torch.Tensor], max_new_tokens: int, durations: Sequence[float],
                     next_inputs: NextInputs, settings: LookSettings, sampling: dict[str, Any] | None = None,
                     times: int = 1, agree: Callable[[bool], bool] | None = None) -> LookTurns:
    """Every prompt's reply, turn by turn, each allowed up to ``settings.max_looks`` looks (module doc): greedy, or
    sampled with the ``generate`` keyword arguments ``sampling`` (GRPO's multi-turn rollouts). ``times`` > 1: each
    prompt's first turn is continued that many times in consecutive rows (``engine.generate(times=...)``, which the
    hf engine serves from one prefill per prompt); ``durations`` and the rows below count those rows.

    ``agree(flag)``: whether ``flag`` ("this process has a turn to generate") holds on any process. Sharded
    generation (FSDP2) is a collective, so while any process goes on, one without a turn of its own generates a
    stand-in (its first prompt again, thrown away) and every process makes as many ``generate`` calls."""
    tokenizer = engine.module.backbone.processor.tokenizer
    texts, ended = _decode(engine, inputs, max_new_tokens, tokenizer, stop=True, sampling=sampling, times=times)
    turns: list[list[str]] = [[text] for text in texts]
    looks: list[list[dict[str, Any]]] = [[] for _ in turns]
    shown: list[list[tuple[str, tuple[float, float], str]]] = [[] for _ in turns]
    frames_used = [0] * len(turns)
    for turn in range(settings.max_looks):
        rows = []
        for row, replies in enumerate(turns):
            last = replies[-1]
            if len(replies) != turn + 1 or LOOK_END not in last:
                continue
            replies[-1] = last = cut_after(last)
            ended[row] = False  # stopped at its </look>: the policy wrote no end of turn
            window, reason = look_request(last, float(durations[row]), settings.min_seconds)
            request = {"requested": extract_tag(last, "look") or "", "window": None, "reason": reason, "frame_times": []}
            looks[row].append(request)
            if window is None:
                continue
            if frames_used[row] + settings.frames > settings.budget:
                request["reason"] = "budget"
                continue
            request["window"] = [window[0], window[1]]
            shown[row].append((last, window, look_turn(window)))
            rows.append(row)
        kept: list[int] = []
        if rows:
            following, frame_times = next_inputs(rows, [shown[row] for row in rows])
            kept = [row for row, seen in zip(rows, frame_times) if seen is not None]
            for row, seen in zip(rows, frame_times):
                if seen is None:
                    looks[row][-1].update(window=None, reason="unreadable")
                    shown[row].pop()
                else:
                    looks[row][-1]["frame_times"] = list(seen[-1])
                    frames_used[row] += len(seen[-1])
        if not (agree(bool(kept)) if agree is not None else kept):
            break
        more = turn + 1 < settings.max_looks
        if not kept:  # another process generates a turn: take part in its collective with a stand-in
            stand_in = engine.module.backbone.slice_vision(inputs, [0])
            _decode(engine, stand_in, max_new_tokens, tokenizer, stop=more, sampling=sampling)
            continue
        texts, ends = _decode(engine, following, max_new_tokens, tokenizer, stop=more, sampling=sampling)
        for row, text, end in zip(kept, texts, ends):
            turns[row].append(text)
            ended[row] = end
    return LookTurns(turns, looks, shown, ended)


def _decode(engine, inputs: dict[str, torch.Tensor], max_new_tokens: int, tokenizer, stop: bool,
            sampling: dict[str, Any] | None = None, times: int = 1) -> tuple[list[str], list[bool]]:
    """Each row's next turn (``times`` rows per row of ``inputs``): its text and whether it ended with an
    end-of-sequence token."""
    extra = {"stopping_criteria": StoppingCriteriaList([StopAfterText(tokenizer, LOOK_END, inputs["input_ids"].shape[1])])
             } if stop else {}
    if sampling is None:
        if times != 1:
            raise ValueError("greedy replies with looks are one per prompt")
        ids = engine.replies(inputs, max_new_tokens, **extra)
    else:
        ids = engine.generate(inputs, max_new_tokens, times=times, **sampling, **extra)
    eos = torch.tensor(list(engine.module.backbone.eos_token_ids), device=ids.device)
    return tokenizer.batch_decode(ids, skip_special_tokens=True), torch.isin(ids, eos).any(dim=1).tolist()
