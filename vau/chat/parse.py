"""Reading model replies: the first JSON object in free text (never eval'd), and prefixed options."""

from __future__ import annotations

import json
from collections.abc import Mapping

_DECODER = json.JSONDecoder()


def first_json_object(text: str) -> dict | None:
    """The first ``{...}`` in ``text`` that parses as a JSON object (code fences and chatter around it are fine),
    else None.

    Example:
        >>> first_json_object('Sure! ```json\\n{"a": 1, "b": [2]}\\n``` done')
        {'a': 1, 'b': [2]}
    """
    text = text if isinstance(text, str) else ""
    start = text.find("{")
    while start != -1:
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def prefixed(options: Mapping[str, object], prefix: str) -> dict[str, object]:
    """``{"judge.path": x, "judge.model": y, "out": z}`` with prefix ``judge`` -> ``{"path": x, "model": y}``."""
    head = f"{prefix}."
    return {k[len(head):]: v for k, v in options.items() if k.startswith(head)}
