"""Tolerant parsing of model output, shared by every reward and metric.

Nothing here raises on any input text or evaluates it as code: the functions return None when a part is absent
or ambiguous. Rules, in short (docs/rewards.md has the full list):

- The *answer body* is the content of the last ``<answer>...</answer>``; without one, the whole reply minus any
  ``<think>``/``<reflect>`` blocks. An empty ``<answer></answer>`` is an empty body: nothing parses from it.
- Intervals are read from ``<glue>`` (VAU-R1's grounding tag) when present, else from the answer body.
- Two different candidate answers in one body (letters, intervals or classes) make it ambiguous: None.
- The normal-clip convention: a normal clip's interval is ``[0.0, 0.0]`` (:data:`NORMAL_INTERVAL`), exactly as
  the TAG prompt asks; :func:`interval_iou` scores identical intervals 1, so ``[0, 0]`` against ``[0, 0]`` is 1
  and any other reply on a normal clip is 0.

Example:
    >>> parse_choice("<think>red flash</think><answer>(B)</answer>", ["Normal", "Fire", "Fight", "Theft"])
    'B'
    >>> parse_interval("<answer>from 0:05 to 0:10.5</answer>")
    (5.0, 10.5)
    >>> parse_class("<answer>traffic_accident</answer>", ["Traffic Accident", "Normal"])
    'Traffic Accident'
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vau.data.annotations import ANOMALY_CLASSES

LETTERS = ("A", "B", "C", "D")
NORMAL_INTERVAL = (0.0, 0.0)
_TAG_CACHE: dict[str, tuple[re.Pattern, re.Pattern]] = {}


def _tag_spans(text: str, tag: str) -> list[tuple[int, int, int, int]]:
    """(open start, content start, content end, close end) of each ``<tag>...</tag>``, left to right.

    Same pairs as ``re.findall(r"<tag>(.*?)</tag>")`` but linear: that regex rescans to the end of the text for
    every unclosed opening tag, which takes seconds on a reply of repeated ``<think>``.
    """
    patterns = _TAG_CACHE.get(tag)
    if patterns is None:
        patterns = _TAG_CACHE[tag] = (re.compile(rf"<{re.escape(tag)}>", re.IGNORECASE),
                                      re.compile(rf"</{re.escape(tag)}>", re.IGNORECASE))
    closes = [(m.start(), m.end()) for m in patterns[1].finditer(text)]
    spans, pos, index = [], 0, 0
    for opening in patterns[0].finditer(text):
        if opening.start() < pos:
            continue
        while index < len(closes) and closes[index][0] < opening.end():
            index += 1
        if index == len(closes):
            break
        spans.append((opening.start(), opening.end(), *closes[index]))
        pos = closes[index][1]
        index += 1
    return spans


def extract_tag(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>...</tag>`` in ``text`` (stripped), or None."""
    text = text if isinstance(text, str) else ""
    spans = _tag_spans(text, tag)
    return text[spans[-1][1]:spans[-1][2]].strip() if spans else None


def strict_format(text: str, tags: tuple[str, ...]) -> bool:
    """True when ``text`` is exactly the given tags in order, each once, with only whitespace between."""
    body = r"\s*".join(rf"<{t}>(?:(?!<{t}>|</{t}>).)+?</{t}>" for t in tags)
    return re.fullmatch(rf"\s*{body}\s*", text if isinstance(text, str) else "", re.DOTALL) is not None


def answer_body(text: str) -> str:
    """What answers are read from: the last ``<answer>`` content, else the reply without think/reflect blocks."""
    text = text if isinstance(text, str) else ""
    answer = extract_tag(text, "answer")
    if answer is not None:
        return answer
    for tag in ("think", "reflect"):
        kept, pos = [], 0
        for start, _, _, end in _tag_spans(text, tag):
            kept.append(text[pos:start])
            pos = end
        text = " ".join([*kept, text[pos:]])
    return text.strip()


# ---------------------------------------------------------------------------------------------- choices ----
_PREFIXED = re.compile(
    r"(?:answer\s*(?:is|:)|option|choice)\s*[:\-]?\s*\(?\s*([A-D])\s*\)?(?![A-Za-z])", re.IGNORECASE
)
_BARE = re.compile(r"^\s*\(?\s*([A-D])\s*(?:[\).:]|$)")
_LONE_LOWER = re.compile(r"^\(?([b-d])\)?\.?$")  # "a" is left out: it is the English article


def _norm_option(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(". ")


def parse_choice(text: str, options: Sequence[str] = ()) -> str | None:
    """The single option letter a reply commits to, or None when absent or ambiguous.

    Looks inside ``<answer>`` when present, else the reply without ``<think>`` blocks. Accepts "B", "(B)", "B.",
    "B. option text", "The answer is B", "Option (B)", or the full text of exactly one option. A reply naming
    several letters ("A or B") is ambiguous and yields None; a lone article such as "a" is never read as option A.
    """
    body = answer_body(text)
    if not body:
        return None
    lone = _LONE_LOWER.match(body)
    if lone:
        return lone.group(1).upper()
    bare = _BARE.match(body)
    if bare and body[0] != "a":  # a lowercase "a" opens English sentences
        letter = bare.group(1).upper()
        rest = body[bare.end():]
        index = LETTERS.index(letter)
        # "C. A fight starts": the capital A belongs to the option's own text, not to a second letter
        if index < len(options) and options[index] and _norm_option(rest) == _norm_option(options[index]):
            return letter
        others = set(re.findall(r"(?<![A-Za-z])([A-D])(?![A-Za-z'])", rest))
        if len(body) <= 3 or not others - {letter}:
            return letter
        return None
    prefixed = {m.upper() for m in _PREFIXED.findall(body)}
    if len(prefixed) == 1:
        return prefixed.pop()
    if len(prefixed) > 1:
        return None
    lowered = _norm_option(body)
    opts = [_norm_option(o) if o else "" for o in options[:4]]
    matched = [LETTERS[i] for i, opt in enumerate(opts) if opt and opt == lowered]
    if len(matched) == 1:
        return matched[0]
    contained = [LETTERS[i] for i, opt in enumerate(opts) if opt and opt in lowered]
    return contained[0] if len(contained) == 1 else None


# -------------------------------------------------------------------------------------------- intervals ----
# Bounded digit runs: a 5000-digit number must not reach int()/float() (int() refuses > 4300 digits).
_NUM = r"[0-9]{1,7}(?:\.[0-9]{1,6})?|\.[0-9]{1,6}"
_CLOCK = r"[0-9]{1,3}:[0-5]?[0-9](?::[0-5]?[0-9])?(?:\.[0-9]{1,6})?"
# a number ends at a unit ("5s", "5 seconds") or where no digit, letter or colon follows
_END = r"(?:\s*(?:s|sec|secs|second|seconds)\b|(?![\w:]|\.[0-9]))"
# A time, read with its sign in every pattern: "-2" is minus two, so "[-2, 5]" and "from -2 to 5" are invalid
# intervals rather than (2, 5). A "-" right before a digit is a sign unless it is glued to what precedes it ("5s-10s",
# "2-5": there it separates). An unsigned number must not start right after a sign, or a failed signed match would
# be retried from the digit and read the number without its sign.
_SIGNED_START = r"(?<![\w.:])-"
_UNSIGNED_START = r"(?<![\w.:])(?<!^-)(?<![^\w.:)\]]-)"
_T = rf"(?:{_SIGNED_START}|{_UNSIGNED_START})(?:{_CLOCK}|{_NUM}){_END}"
_SEP = r"\s*(?:-|–|—|~|to|until|till|and)\s*"
_INTERVAL_PATTERNS = (
    re.compile(rf"[\[(]\s*({_T})\s*(?:,|;|-|–|—|~|to)\s*({_T})\s*[\])]", re.IGNORECASE),
    re.compile(rf"\b(?:from|between)\s+({_T}){_SEP}({_T})", re.IGNORECASE),
    re.compile(rf"({_T})\s*(?:-|–|—|~|\bto\b|\buntil\b|\btill\b)\s*({_T})", re.IGNORECASE),
    re.compile(rf"\bstart(?:\s*time)?\W{{0,4}}({_T})\W.{{0,30}}?\bend(?:\s*time)?\W{{0,4}}({_T})",
               re.IGNORECASE | re.DOTALL),
)
_PAIR_ONLY = re.compile(rf"\W*(?<!-)({_T})\s*[,;]\s*({_T})\W*", re.IGNORECASE)
_UNIT_TAIL = re.compile(r"\s*[a-z]*$", re.IGNORECASE)


def parse_seconds(token: str) -> float | None:
    """Seconds in "12.5", "12.5s", "-1", "mm:ss(.f)" or "hh:mm:ss(.f)"; None when it is none of these.

    Example:
        >>> parse_seconds("1:02:03.5")
        3723.5
    """
    token = _UNIT_TAIL.sub("", (token or "").strip())
    sign = -1.0 if token.startswith("-") else 1.0
    token = token.lstrip("-")
    if not re.fullmatch(rf"{_CLOCK}|{_NUM}", token):
        return None
    value = 0.0
    for part in token.split(":"):
        value = value * 60.0 + float(part)
    return sign * value if math.isfinite(value) else None


def _valid(start: float | None, end: float | None) -> bool:
    return start is not None and end is not None and 0.0 <= start <= end


def parse_interval(text: str) -> tuple[float, float] | None:
    """The single ``(start, end)`` in seconds a reply gives, or None when absent, invalid or ambiguous.

    Reads ``<glue>`` when present, else the answer body (see :func:`answer_body`). Accepts "[s, e]", "(s, e)",
    "s - e", "s to e", "from s to e seconds", "between s and e", "start: s, end: e", a bare "s, e", and times as
    seconds, "mm:ss" or "hh:mm:ss". An interval with a negative start or an end before its start is invalid
    (so "[-1, -1]" is no answer); two different valid intervals are ambiguous.
    """
    glue = extract_tag(text, "glue")
    body = glue if glue is not None else answer_body(text)
    if not body or len(body) > 20000:  # a reply this long is not an interval; keeps the regexes cheap
        return None
    found: set[tuple[float, float]] = set()
    for pattern in _INTERVAL_PATTERNS:
        for start_text, end_text in pattern.findall(body):
            start, end = parse_seconds(start_text), parse_seconds(end_text)
            if _valid(start, end):
                found.add((round(start, 6), round(end, 6)))
    if not found:
        pair = _PAIR_ONLY.fullmatch(body)
        if pair:
            start, end = parse_seconds(pair.group(1)), parse_seconds(pair.group(2))
            if _valid(start, end):
                found.add((round(start, 6), round(end, 6)))
    return found.pop() if len(found) == 1 else None


def is_normal_interval(interval: tuple[float, float] | None) -> bool:
    """True for the normal-clip answer/ground truth ``[0.0, 0.0]``."""
    return interval is not None and tuple(float(x) for x in interval) == NORMAL_INTERVAL


def interval_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Temporal IoU of two intervals in [0, 1]: symmetric, 1 for identical ones (even of zero length), 0 if disjoint.

    Scoring identical zero-length intervals 1 is what makes the normal-clip convention work: the reply [0, 0]
    on a normal clip (ground truth [0, 0]) scores 1, every other reply scores 0.

    Example:
        >>> interval_iou((0.0, 10.0), (5.0, 15.0))
        0.3333333333333333
    """
    (s1, e1), (s2, e2) = (float(a[0]), float(a[1])), (float(b[0]), float(b[1]))
    if (s1, e1) == (s2, e2):
        return 1.0
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = max(e1, e2) - min(s1, s2)
    if not (union > 0 and math.isfinite(union)):
        return 0.0
    return min(1.0, max(0.0, inter / union))


# ------------------------------------------------------------------------------------------------ classes ----
def normalize_label(text: str) -> str:
    """Lower case, ``_``/``-``/spaces collapsed to one space, punctuation dropped, simple plurals singular.

    Both sides of every comparison go through this, so "anomalous" -> "anomalou" is harmless.

    Example:
        >>> normalize_label("Road_Accidents.")
        'road accident'
    """
    words = re.sub(r"[^\w]+|_", " ", text.lower() if isinstance(text, str) else "").split()
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


# replies that mean "the normal class" without naming it
NORMAL_PHRASES = ("no anomaly", "no anomalies", "absence of anomaly", "not anomalous", "nothing anomalous", "none")
_NORMAL_KEYS = tuple(normalize_label(p) for p in NORMAL_PHRASES)
_YES = tuple(normalize_label(w) for w in ("yes", "anomalous", "abnormal", "anomaly", "true"))
_NO = tuple(normalize_label(w) for w in ("no", "normal", "false"))


def _contains(haystack: str, needle: str) -> bool:
    """Whole-word containment of normalised phrases."""
    return f" {needle} " in f" {haystack} "


def _normal_name(classes: Sequence[str]) -> str:
    return next((c for c in classes if normalize_label(c) == "normal"), "Normal")


def canonical_class(name: str, classes: Sequence[str] | None = None) -> str | None:
    """The entry of ``classes`` (default: vau.data.ANOMALY_CLASSES) that ``name`` spells, up to case/space/_."""
    classes = _default_classes() if classes is None else classes
    key = normalize_label(name)
    return next((c for c in classes if normalize_label(c) == key), None)


def _default_classes() -> tuple[str, ...]:
    return ANOMALY_CLASSES


def class_candidates(truth: str, classes: Sequence[str] = ANOMALY_CLASSES) -> tuple[str, ...]:
    """``classes`` plus the ground-truth class when the list does not spell it (so a correct reply can match)."""
    classes = tuple(classes)
    return classes if canonical_class(truth, classes) else (*classes, truth)


def parse_class(text: str, classes: Sequence[str] | None = None) -> str | None:
    """The one class name of ``classes`` a reply gives (its spelling from ``classes``), or None.

    Matches case, space, underscore and plural variants ("people_falling", "Road accident"); "no anomaly",
    "absence of anomaly" and the like mean the normal class. A body naming two classes is ambiguous.
    """
    classes = _default_classes() if classes is None else classes
    body = normalize_label(answer_body(text))
    if not body or len(body) > 20000:
        return None
    keys = {normalize_label(c): c for c in classes if normalize_label(c)}
    normal = _normal_name(classes)
    if body in keys:
        return keys[body]
    if body in _NORMAL_KEYS:
        return normal
    hits = {c for key, c in keys.items() if _contains(body, key)}
    if any(_contains(body, key) for key in _NORMAL_KEYS):
        hits.add(normal)
    # "fire" inside a matched "fire hazard" is not a second answer
    keep = {c for c in hits if not any(c != o and _contains(normalize_label(o), normalize_label(c)) for o in hits)}
    return keep.pop() if len(keep) == 1 else None


def parse_anomalous(text: str, classes: Sequence[str] | None = None) -> bool | None:
    """True when a reply says the video is anomalous, False when normal, None when it does not say.

    Reads a leading yes/no ("Yes", "no anomaly"), else a class name (any class but Normal means anomalous).
    """
    body = normalize_label(answer_body(text))
    if not body or len(body) > 20000:
        return None
    first = body.split()[0]
    if body in _YES or first == "yes":
        return True
    if body in _NO or first == "no":
        return False
    cls = parse_class(text, classes)
    if cls is None:
        return None
    return normalize_label(cls) != "normal"


def is_normal_class(name: str) -> bool:
    return normalize_label(name) == "normal"


# --------------------------------------------------------------------------------------------- one reply ----
@dataclass(frozen=True)
class ParsedReply:
    """Every part of one reply; fields are None when absent or ambiguous.

    Attributes:
        strict: the reply is exactly the task's tags in order with non-blank content (False without a task).
    """

    think: str | None
    answer: str | None
    reflect: str | None
    glue: str | None
    strict: bool
    choice: str | None
    interval: tuple[float, float] | None
    anomaly_class: str | None
    anomalous: bool | None


def has_strict_format(text: str, tags: tuple[str, ...]) -> bool:
    """:func:`strict_format` plus non-blank content in every tag (so ``<answer> </answer>`` fails).

    Every occurrence counts, not only the last: a repeated tag (the reflect format has two ``<think>`` and two
    ``<answer>`` blocks) with a blank first block fails too.
    """
    if not (bool(tags) and strict_format(text, tags)):
        return False
    return all(text[start:end].strip() for tag in set(tags) for _, start, end, _ in _tag_spans(text, tag))


def parse_reply(text: str, tags: tuple[str, ...] = (), options: Sequence[str] = (),
                classes: Sequence[str] | None = None) -> ParsedReply:
    """Parse everything at once (``tags`` are the task's format tags, e.g. ``("think", "answer")``).

    Example:
        >>> parse_reply("<think>smoke</think><answer>[2, 7.5]</answer>", ("think", "answer")).interval
        (2.0, 7.5)
    """
    text = text if isinstance(text, str) else ""
    return ParsedReply(
        think=extract_tag(text, "think"), answer=extract_tag(text, "answer"), reflect=extract_tag(text, "reflect"),
        glue=extract_tag(text, "glue"), strict=has_strict_format(text, tags), choice=parse_choice(text, options),
        interval=parse_interval(text), anomaly_class=parse_class(text, classes),
        anomalous=parse_anomalous(text, classes),
    )


# ------------------------------------------------------------------------------------------- reflection ----
_REFLECT_OPEN = re.compile(r"<reflect>", re.IGNORECASE)


def reflect_body(reply: str) -> str | None:
    """The reply before its first complete ``<reflect>`` block, or None when it does not reflect."""
    text = reply if isinstance(reply, str) else ""
    match = _REFLECT_OPEN.search(text)
    if match is None or extract_tag(text[match.start():], "reflect") is None:
        return None
    return text[:match.start()]


def reflects(reply: str) -> bool:
    """Whether a reply holds a non-blank ``<reflect>`` block."""
    return bool(extract_tag(reply if isinstance(reply, str) else "", "reflect"))


# ------------------------------------------------------------------------------------------ second look ----
#: Why a ``<look>`` request gave the window it did (counted by whoever serves it, never an exception).
LOOK_REASONS = ("ok", "clamped", "widened", "no_look", "unparsed", "reversed", "outside")
_LOOK_PAIR = re.compile(rf"^\W*({_T})\s*(?:,|;|-|–|—|~|\bto\b)\s*({_T})\W*$", re.IGNORECASE)


LOOK_END = "</look>"  # a reply that asks for a second look stops right after it


def cut_after(reply: str, text: str = LOOK_END) -> str:
    """``reply`` up to and including the first ``text``: a reply's first turn when it asked for a look.

    >>> cut_after("<answer>B</answer><look>[1, 2]</look> x")
    '<answer>B</answer><look>[1, 2]</look>'
    """
    at = reply.find(text)
    return reply if at < 0 else reply[: at + len(text)]


def look_request(reply: str, duration: float, min_seconds: float = 1.0) -> tuple[tuple[float, float] | None, str]:
    """The window a reply asks to see again, ``<look>[start, end]</look>`` in seconds (the first such tag), fitted
    to a video of ``duration`` seconds, and the reason (one of :data:`LOOK_REASONS`); never raises on any text.

    A window partly outside the video is clamped to it (``clamped``); one shorter than ``min_seconds`` is widened
    around its centre, inside the video (``widened``); one wholly outside, reversed or unreadable is refused (None).

    Example:
        >>> look_request("<answer>B</answer><look>[12, 15.5]</look>", 30.0)
        ((12.0, 15.5), 'ok')
        >>> look_request("<look>[25, 40]</look>", 30.0)
        ((25.0, 30.0), 'clamped')
        >>> look_request("<look>[9, 4]</look>", 30.0)
        (None, 'reversed')
    """
    body = extract_tag(reply if isinstance(reply, str) else "", "look")
    if body is None:
        return None, "no_look"
    match = _LOOK_PAIR.match(body) if len(body) < 200 else None
    start, end = (parse_seconds(match.group(1)), parse_seconds(match.group(2))) if match else (None, None)
    if start is None or end is None or not duration > 0:
        return None, "unparsed"
    if end < start:
        return None, "reversed"
    if start >= duration or end <= 0:
        return None, "outside"
    reason = "ok"
    if start < 0 or end > duration:
        start, end, reason = max(start, 0.0), min(end, float(duration)), "clamped"
    if end - start < min_seconds:
        half = min(min_seconds, float(duration)) / 2
        centre = min(max((start + end) / 2, half), float(duration) - half)
        start, end, reason = centre - half, centre + half, "widened"
    return (round(start, 6), round(end, 6)), reason
