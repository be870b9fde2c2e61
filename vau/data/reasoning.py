"""Turn the VAU-Bench ``Reasoning`` column into clean text, without ``eval``.

The released files store the chain-of-thought rationale in two shapes:

- markdown: ``### Specific Anomaly Type: Assault  ### Location The event ...  - **Key point**: ...``
  (line breaks were flattened to double spaces when the CSVs were written);
- Python literals inside (or instead of) that markdown: ``### Key Evidence: ['a', "b's"]`` and
  ``### Cause and Effect: {'Cause': [...], 'Effect': '...'}``; a whole cell may also be one dict.

:func:`clean_reasoning` returns one ``Heading: text`` line per section, list items on their own ``- `` lines,
markdown emphasis removed, and Python lists/dicts rendered as ``a; b`` / ``Key: value; Key: value``. The
literals are read by a small parser of string/number/list/dict syntax: nothing in the file is ever executed.

Example:
    >>> clean_reasoning("### Location: Outdoor ### Key Evidence: ['smoke', \\"a man's bag\\"]")
    "Location: Outdoor\\nKey Evidence: smoke; a man's bag"
"""

from __future__ import annotations

import re

# Section headings seen in the released files; used to split "### Location The event ..." (no colon).
HEADINGS = (
    "Specific Anomaly Type", "Location", "Key Evidence", "Detailed Explanation", "Cause and Effect", "Conclusion",
    "Answer", "Detailed Reasoning Process",
)
_HEADING_RE = re.compile(r"(?:^|\s)#{1,6}\s*(?=[A-Za-z])")
_KNOWN = re.compile(r"^(" + "|".join(re.escape(h) for h in HEADINGS) + r")\b\s*:?\s*", re.IGNORECASE)
_LITERAL_START = re.compile(r"[\[{]\s*['\"{\[]")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "\n": ""}


class LiteralError(ValueError):
    """Text that is not a well-formed Python string/list/dict literal."""


class _LiteralParser:
    """Recursive-descent reader of the literal subset found in the files: str, int/float, bool/None, list,
    tuple, dict. ``parse_at`` returns the value and the index just past it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _skip(self, i: int) -> int:
        while i < len(self.text) and self.text[i].isspace():
            i += 1
        return i

    def parse_at(self, i: int):
        i = self._skip(i)
        if i >= len(self.text):
            raise LiteralError("unexpected end of text")
        ch = self.text[i]
        if ch in "'\"":
            return self._string(i)
        if ch in "[(":
            return self._sequence(i, "]" if ch == "[" else ")")
        if ch == "{":
            return self._dict(i)
        match = re.compile(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|True|False|None").match(self.text, i)
        if match:
            word = match.group(0)
            value = {"True": True, "False": False, "None": None}.get(word, word)
            return (float(value) if "." in value or "e" in value.lower() else int(value)) if isinstance(
                value, str) else value, match.end()
        raise LiteralError(f"unexpected {ch!r} at {i}")

    def _string(self, i: int):
        quote = self.text[i]
        if self.text.startswith(quote * 3, i):
            raise LiteralError("triple-quoted strings are not supported")
        out, j = [], i + 1
        while j < len(self.text):
            ch = self.text[j]
            if ch == quote:
                return "".join(out), j + 1
            if ch == "\\" and j + 1 < len(self.text):
                nxt = self.text[j + 1]
                if nxt in "xuU":
                    width = {"x": 2, "u": 4, "U": 8}[nxt]
                    digits = self.text[j + 2:j + 2 + width]
                    if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                        raise LiteralError(f"bad \\{nxt} escape at {j}")
                    out.append(chr(int(digits, 16)))
                    j += 2 + width
                    continue
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                j += 2
                continue
            out.append(ch)
            j += 1
        raise LiteralError("unterminated string")

    def _items(self, i: int, close: str, item):
        j = self._skip(i + 1)
        values = []
        while True:
            if j < len(self.text) and self.text[j] == close:
                return values, j + 1
            value, j = item(j)
            values.append(value)
            j = self._skip(j)
            if j < len(self.text) and self.text[j] == ",":
                j = self._skip(j + 1)
            elif j >= len(self.text) or self.text[j] != close:
                raise LiteralError(f"expected ',' or {close!r} at {j}")

    def _sequence(self, i: int, close: str):
        values, end = self._items(i, close, self.parse_at)
        return (tuple(values) if close == ")" else values), end

    def _dict(self, i: int):
        def pair(j: int):
            key, j = self.parse_at(j)
            j = self._skip(j)
            if j >= len(self.text) or self.text[j] != ":":
                raise LiteralError(f"expected ':' at {j}")
            value, j = self.parse_at(j + 1)
            return (key, value), j

        pairs, end = self._items(i, "}", pair)
        return dict(pairs), end


def parse_literal(text: str):
    """The Python value of ``text``, which must be exactly one literal (str, number, list, tuple, dict).

    Raises:
        LiteralError: malformed or trailing text.
    """
    parser = _LiteralParser(text)
    value, end = parser.parse_at(0)
    if parser._skip(end) != len(text):
        raise LiteralError(f"trailing text at {end}")
    return value


def render(value) -> str:
    """Plain text of a parsed literal: lists joined with ``; ``, dicts as ``Key: value``."""
    if isinstance(value, dict):
        return "; ".join(f"{_tidy(str(k))}: {render(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "; ".join(render(v) for v in value)
    return _tidy(str(value))


def _tidy(text: str) -> str:
    text = re.sub(r"\*\*|`", "", text)  # markdown bold/code; "_" is kept (Traffic_accident, snake_case words)
    return re.sub(r"\s+", " ", text).strip()


def _replace_literals(text: str) -> tuple[str, bool]:
    """Render every embedded list/dict literal in ``text``; returns the text and whether one was found."""
    parser = _LiteralParser(text)
    out, i, found = [], 0, False
    while True:
        match = _LITERAL_START.search(text, i)
        if not match:
            break
        try:
            value, end = parser.parse_at(match.start())
        except LiteralError:
            out.append(text[i:match.end()])  # not a literal after all (or a broken one): keep the characters
            i = match.end()
            continue
        out.append(text[i:match.start()] + render(value))
        i, found = end, True
    out.append(text[i:])
    return "".join(out), found


def _section(chunk: str) -> str:
    chunk = chunk.strip()
    known = _KNOWN.match(chunk)
    if known:
        heading, body = known.group(1), chunk[known.end():]
    elif ":" in chunk[:60]:
        heading, body = chunk.split(":", 1)
    else:
        heading, body = "", chunk
    # The files flattened line breaks to spaces; a bullet ("- item") that opens the body or follows the end of a
    # sentence, or a numbered item after a double space, starts a new line again.
    body = re.sub(r"(?:^|(?<=[.!?:;\"')]))\s*(?=[-*•]\s)|\s{2,}(?=\d+[.)]\s)", "\n", body.strip())
    lines = [_tidy(re.sub(r"^[*•]\s", "- ", line)) for line in body.split("\n")]
    body = "\n".join(line for line in lines if line)
    heading = _tidy(heading)
    if heading and body:
        return f"{heading}:{chr(10) if body.startswith('- ') else ' '}{body}"
    return heading or body


def clean_reasoning(raw: str) -> str:
    """Clean text of one ``Reasoning`` cell (markdown or Python-literal flavoured); "" for an empty cell."""
    text = (raw or "").strip()
    if not text or text == "-1":
        return ""
    if text[0] in "{[":
        try:
            value = parse_literal(text)
        except LiteralError:
            value = None
        if isinstance(value, dict):
            return "\n".join(f"{_tidy(str(k))}: {render(v)}" for k, v in value.items())
        if isinstance(value, list):
            return "\n".join(f"- {render(v)}" for v in value)
    text, _ = _replace_literals(text)
    chunks = [c for c in _HEADING_RE.split(text) if c.strip()]
    return "\n".join(s for s in (_section(c) for c in chunks) if s)


def reasoning_format(raw: str) -> str:
    """``"python"`` when the cell holds Python list/dict literals, ``"markdown"`` for headings, else ``"plain"``."""
    text = (raw or "").strip()
    if text[:1] in "{[" or _LITERAL_START.search(text):
        return "python"
    return "markdown" if "#" in text or "**" in text else "plain"
