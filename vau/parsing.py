"""Tolerant parsing of model output, shared by every reward and metric.

Nothing here raises on any input text or evaluates it: the functions return None when a part is absent.

Example:
    >>> parse_choice("<think>red flash</think><answer>(B)</answer>", ["Normal", "Fire", "Fight", "Theft"])
    'B'
"""

from __future__ import annotations

import re

LETTERS = ("A", "B", "C", "D")
_TAG_CACHE: dict[str, re.Pattern] = {}


def extract_tag(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>...</tag>`` in ``text`` (stripped), or None."""
    pattern = _TAG_CACHE.get(tag)
    if pattern is None:
        pattern = _TAG_CACHE[tag] = re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL | re.IGNORECASE)
    found = pattern.findall(text or "")
    return found[-1].strip() if found else None


def strict_format(text: str, tags: tuple[str, ...]) -> bool:
    """True when ``text`` is exactly the given tags in order, each once, with only whitespace between."""
    body = r"\s*".join(rf"<{t}>(?:(?!<{t}>|</{t}>).)+?</{t}>" for t in tags)
    return re.fullmatch(rf"\s*{body}\s*", text or "", re.DOTALL) is not None


_PREFIXED = re.compile(
    r"(?:answer\s*(?:is|:)|option|choice)\s*[:\-]?\s*\(?\s*([A-D])\s*\)?(?![A-Za-z])", re.IGNORECASE
)
_BARE = re.compile(r"^\s*\(?\s*([A-D])\s*(?:[\).:]|$)")


def parse_choice(text: str, options: list[str] | tuple[str, ...] = ()) -> str | None:
    """The single option letter a reply commits to, or None when absent or ambiguous.

    Looks inside ``<answer>`` when present, else the whole reply. Accepts "B", "(B)", "B.", "B. option text",
    "The answer is B", "Option (B)", or the full text of exactly one option. A reply naming several letters
    ("A or B") is ambiguous and yields None; a lone article such as "a" is never read as option A.
    """
    answer = extract_tag(text, "answer")
    body = answer if answer is not None else (text or "")
    body = body.strip()
    if not body:
        return None
    bare = _BARE.match(body)
    if bare and body[0] != "a":  # a lowercase "a" opens English sentences
        candidates = {bare.group(1).upper()}
        rest = body[bare.end():]
        others = set(re.findall(r"(?<![A-Za-z])([A-D])(?![A-Za-z'])", rest))
        if len(body) <= 3 or not others - candidates:
            return bare.group(1).upper()
        return None
    prefixed = {m.upper() for m in _PREFIXED.findall(body)}
    if len(prefixed) == 1:
        return prefixed.pop()
    if len(prefixed) > 1:
        return None
    lowered = body.lower().rstrip(". ")
    matched = [LETTERS[i] for i, opt in enumerate(options[:4]) if opt and opt.lower().rstrip(". ") == lowered]
    if len(matched) == 1:
        return matched[0]
    contained = [LETTERS[i] for i, opt in enumerate(options[:4]) if opt and opt.lower().rstrip(". ") in lowered]
    return contained[0] if len(contained) == 1 else None
