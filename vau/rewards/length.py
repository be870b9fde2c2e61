"""Length shaping: a soft penalty for replies that run into the generation limit (as in DAPO's overlong shaping)."""

from __future__ import annotations

import math

from vau.registry import REWARDS
from vau.tasks import Sample


def finite_number(value) -> float | None:
    """``value`` as a finite float, or None (rewards read config and context values through it, never raising)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@REWARDS.register("overlong_penalty")
def overlong_penalty(completions: list[str], samples: list[Sample], buffer: int | None = None,
                     **ctx) -> list[float | None]:
    """0 up to max_new_tokens - buffer tokens, then falling linearly to -1 at the limit; range [-1, 0].

    Reads ``ctx["completion_lengths"]`` (tokens per completion) and ``ctx["max_new_tokens"]``; without them it
    returns None (it does not guess lengths from characters). A truncated reply (length >= limit) gets -1.

    Args:
        buffer: width of the linear ramp in tokens; default a quarter of ``max_new_tokens``.
    """
    lengths = ctx.get("completion_lengths")
    limit = finite_number(ctx.get("max_new_tokens"))
    if lengths is None or limit is None or limit <= 0:
        return [None] * len(completions)
    ramp = finite_number(buffer) if buffer is not None else limit / 4
    ramp = min(max(ramp or 1.0, 1.0), limit)
    free = limit - ramp
    out: list[float | None] = []
    for index in range(len(completions)):
        length = finite_number(lengths[index]) if index < len(lengths) else None
        if length is None:
            out.append(None)
        elif length >= limit:
            out.append(-1.0)
        else:
            out.append(-min(1.0, max(0.0, (length - free) / ramp)))
    return out
