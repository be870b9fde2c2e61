"""Example reward plugin, written outside vau/: it registers ``brevity`` when its module is imported.

Use it from a config (see plugins/brevity.yaml)::

    plugins: [plugins.brevity]
    reward:
      brevity: {weight: 0.1, target_chars: 300}
"""

from __future__ import annotations

from vau.registry import REWARDS


@REWARDS.register("brevity")
def brevity(completions: list[str], samples: list, target_chars: int = 400, **ctx) -> list[float | None]:
    """1 for replies up to target_chars characters, falling linearly to 0 at twice that length; range [0, 1].

    A small nudge against rambling: weight it well below the accuracy rewards, or a model learns that an
    empty reply is the cheapest way to score.

    Args:
        target_chars: the longest reply that still gets the full reward.
    """
    limit = max(1, int(target_chars))
    out: list[float | None] = []
    for text in completions:
        length = len(text) if isinstance(text, str) else 0
        out.append(min(1.0, max(0.0, 2.0 - length / limit)))
    return out
