"""Position-robust multiple-choice scoring: raw and circular accuracy, and the constant-letter baselines.

VAU-Bench's correct options are skewed towards the first letters (MSAD test: A is right in 68% of the questions),
so a model that learned "answer A" looks good on raw accuracy. Two numbers expose that:

- the *constant-letter baselines*: the accuracy of always answering A (B, C, D) on the same rows;
- *circular accuracy*: each question is also asked with its options rotated (``shift`` k = 1..n-1), and a row
  counts as right only when the reply is right under every shift 0..n-1 (a missing shift counts wrong).

Shift convention (the prediction-record contract): under shift k the option shown with letter i is the original
option (i + k) mod n, so a reply letter j answers original option (j + k) mod n; shift 0 is the original order.

Example:
    >>> original_option(0, 1, 4)  # letter A under shift 1 shows original option B
    1
    >>> shown_options(("a", "b", "c", "d"), 1)
    ('b', 'c', 'd', 'a')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from vau.data.annotations import LETTERS


def parse_shifts(spec, n: int = 4) -> list[int] | None:
    """Shifts to ask (``qa_shifts`` of predict, ``data.qa_shifts`` of evaluation): None/empty (none), ``all``
    (0..n-1), or a list / comma list; shift 0 (the original order, raw accuracy) is always included.

    >>> parse_shifts("all"), parse_shifts("2,1"), parse_shifts(None)
    ([0, 1, 2, 3], [0, 1, 2], None)
    """
    if spec is None or spec == "" or spec is False:
        return None
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(n))
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        return sorted({int(v) % n for v in parts if str(v).strip()} | {0})
    except ValueError:
        raise ValueError(f"qa_shifts={spec!r}: give `all` or shifts like 0,1,2,3") from None


def original_option(letter_index: int, shift: int, n: int) -> int:
    """The original option index that reply letter ``letter_index`` names when the options were shifted by ``shift``."""
    if n <= 0:
        raise ValueError(f"a question needs at least one option (got n={n})")
    return (letter_index + shift) % n


def shown_options(options: Sequence[str], shift: int) -> tuple[str, ...]:
    """The options in the order a question under ``shift`` shows them (letter i shows original option i + shift)."""
    n = len(options)
    return tuple(options[original_option(i, shift, n)] for i in range(n))


def original_letter(reply_letter: str | None, shift: int, n: int) -> str | None:
    """The original letter a reply letter answers under ``shift``; None for no (or an out-of-range) letter."""
    if reply_letter is None or reply_letter not in LETTERS[:n]:
        return None
    return LETTERS[original_option(LETTERS.index(reply_letter), shift, n)]


def shifted_answer(task, reply: str, sample, shift: int, options: Sequence[str] | None = None) -> str | None:
    """The original letter ``reply`` chooses when ``sample`` was asked under ``shift``.

    Args:
        task: the choice task (its ``parse`` reads the letter; an option's full text counts too).
        reply: the model's reply.
        sample: the sample in the original option order.
        shift: the cyclic shift the question was asked with.
        options: the options as asked, when the prediction record carries them; else the rotated originals.
    """
    asked = tuple(options) if options else shown_options(sample.options, shift)
    letter = task.parse(reply, replace(sample, options=asked))
    return original_letter(letter, shift, len(sample.options))


def constant_baselines(samples: Sequence) -> dict[str, float | None]:
    """Accuracy of always answering each letter on ``samples`` (their ``answer`` is the correct letter)."""
    width = max((len(s.options) for s in samples), default=len(LETTERS))
    return {letter: (sum(s.answer == letter for s in samples) / len(samples) if samples else None)
            for letter in LETTERS[:width]}


def position_scores(task, samples: Sequence, replies: Mapping[tuple[str, int], Mapping]) -> dict:
    """Raw accuracy, circular accuracy and the constant-letter baselines of ``samples``.

    Args:
        task: the choice task.
        samples: the rows (each once) in the denominator.
        replies: ``(video, shift) -> prediction record`` (``response`` and optional ``options`` as asked).

    Returns:
        ``{"raw", "circular", "initial_circular", "shifts", "n", "constant": {"A": .., ...}}``; ``circular`` is
        None when no record has a shift other than 0; ``initial_circular`` (the same for the answer given before a
        ``<reflect>``; a reply that does not reflect counts with its only answer) is None also when no reply
        reflects. Fractions in [0, 1] (None without rows).
    """
    shifts = sorted({shift for _, shift in replies})
    n = len(samples)

    def right(sample, shift: int, initial: bool = False) -> bool:
        record = replies.get((sample.video, shift))
        if record is None:
            return False
        reply = record.get("response", "")
        if initial:
            reply = task.initial_reply(reply) or reply
        return shifted_answer(task, reply, sample, shift, record.get("options")) == sample.answer

    def circular_share(initial: bool = False) -> float:
        return sum(all(right(s, k, initial) for k in range(len(s.options))) for s in samples) / n

    raw = sum(right(s, 0) for s in samples)
    circular = initial_circular = None
    if any(k != 0 for k in shifts) and n:
        circular = circular_share()
        if any(task.initial_reply(r.get("response", "")) is not None for r in replies.values()):
            initial_circular = circular_share(initial=True)
    return {"raw": raw / n if n else None, "circular": circular, "initial_circular": initial_circular,
            "shifts": shifts or [0], "n": n, "constant": constant_baselines(samples)}
