"""Reading model replies: the first JSON object in free text (never eval'd), and prefixed options.

Every JSON read here is bounded: the standard decoder recurses once per nesting level, so a reply of 100000 ``[``
raises RecursionError (not ValueError) and ends whatever loop reads it. :func:`loads_bounded` measures the nesting
first, in one linear pass, and refuses what is too deep or too long with a ValueError like any malformed JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

_DECODER = json.JSONDecoder()
# a JSON string (escapes included) or one bracket: what the nesting scan steps over; strings whole, so a bracket
# inside one does not count
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
MAX_DEPTH = 32  # a judge's or teacher's object is 1-2 levels deep; a chat completion about 5
MAX_CHARS = 200_000  # replies are a few thousand characters (max_new_tokens); more is not an answer
MAX_TRIES = 100  # "{" positions tried as the start of an object before giving up


def _depth_ok(text: str, start: int, max_depth: int) -> bool:
    """Whether the value starting at ``start`` stays within ``max_depth`` levels until it closes (or the text ends).

    The scan follows the decoder's own notion of strings, so on any prefix the decoder accepts, the depth counted
    here is the depth it would recurse to; it stops as soon as the value closes or grows too deep.
    """
    depth = 0
    for token in _TOKENS.finditer(text, start):
        mark = token.group()
        if mark in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif mark in "]}":
            depth -= 1
            if depth <= 0:
                return True
    return True


def loads_bounded(text: str | bytes, max_depth: int = MAX_DEPTH, max_chars: int = MAX_CHARS):
    """``json.loads`` that raises ValueError, never RecursionError, for input nested deeper than ``max_depth`` or
    longer than ``max_chars``; bytes must be UTF-8 (UnicodeDecodeError is a ValueError too)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    if len(text) > max_chars:
        raise ValueError(f"JSON text of {len(text)} characters, more than {max_chars}")
    begin = len(text) - len(text.lstrip())
    if not _depth_ok(text, begin, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(text)


def first_json_object(text: str) -> dict | None:
    """The first ``{...}`` in ``text`` that parses as a JSON object (code fences and chatter around it are fine),
    else None.

    Bounded: only the first :data:`MAX_CHARS` characters and :data:`MAX_TRIES` ``{`` positions are tried, and a
    ``{`` that opens something nested deeper than :data:`MAX_DEPTH` levels ends the search (None).

    Example:
        >>> first_json_object('Sure! ```json\\n{"a": 1, "b": [2]}\\n``` done')
        {'a': 1, 'b': [2]}
    """
    text = text[:MAX_CHARS] if isinstance(text, str) else ""
    start = text.find("{")
    for _ in range(MAX_TRIES):
        if start == -1:
            break
        if not _depth_ok(text, start, MAX_DEPTH):
            return None  # an object inside a too-deep one is a fragment of junk, not the reply's answer
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
