"""Output safety, one rule for every command: check every path a command will write before it does any work.

A command names its outputs and its inputs; :func:`check_output` refuses, with the config key named,

- an output that is a folder (a file is meant);
- an output that is one of the command's input files, or where a companion file the command writes beside an output
  (the CSV twin of ``predict``'s JSON lines) would land on an input: writing there would destroy the input;
- an existing file the command did not write (``ours`` says what its own files look like), unless
  ``overwrite=true``;
- an output whose folder cannot be written (found before a model is loaded, not after the first batch).

docs/guarantees.md lists what each command writes and what it never overwrites.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from vau.config import ConfigError


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (through symlinks and ``..``), existing or not."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return Path(os.path.realpath(a)) == Path(os.path.realpath(b))


def _writable_folder(path: Path) -> Path | None:
    """The nearest existing folder above ``path`` when it cannot be written into, else None."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return None if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK) else folder


def check_output(key: str, path: str | Path, inputs: Mapping[str, str | Path] | None = None, *,
                 overwrite: bool = False, ours: Callable[[Path], bool] | None = None, append: bool = False,
                 error: type[Exception] = ConfigError, label: str | None = None) -> Path:
    """Refuse to write ``path`` (config key ``key``) when that would lose data; returns ``path`` as a Path.

    Args:
        inputs: the command's input files by config key; an output may be none of them.
        overwrite: the user allows replacing an existing file that the command did not write.
        ours: whether an existing file at ``path`` is one the command wrote before (it may then be replaced).
        append: the command adds to an existing file of its own (resume); it is never replaced.
        error: the exception class the command reports its errors with.
        label: how messages name the path (default ``key=path``; e.g. "the CSV twin of out=..." for a companion).

    Example:
        >>> check_output("out", "/tmp/a.csv", {"annotations": "/tmp/a.csv"})
        Traceback (most recent call last):
        ...
        vau.config.ConfigError: out=/tmp/a.csv is the annotations file given as input: writing it would destroy it; choose another out=
    """
    path = Path(path)
    label = label or f"{key}={path}"
    for name, source in (inputs or {}).items():
        if source and same_file(path, Path(source)):
            raise error(f"{label} is the {name} file given as input: writing it would destroy it; "
                        f"choose another {key}=")
    if path.is_dir():
        raise error(f"{label} is a folder; give the path of a file")
    if path.exists() and not append and not overwrite and not (ours is not None and ours(path)):
        raise error(f"{label} exists and was not written by this command; choose another {key}= or pass "
                    f"overwrite=true to replace it")
    if path.exists() and not os.access(path, os.W_OK):
        raise error(f"{label} cannot be written (permission denied); choose another {key}=")
    blocked = _writable_folder(path)
    if blocked is not None:
        why = "permission denied" if blocked.is_dir() else "a file, not a folder"
        raise error(f"{label}: cannot write into {blocked} ({why}); choose another {key}=")
    return path


def first_line_is(header: str) -> Callable[[Path], bool]:
    """An ``ours`` test: the file's first line is ``header`` (a CSV a command wrote with that header)."""

    def test(path: Path) -> bool:
        try:
            with path.open(encoding="utf-8", errors="replace", newline="") as handle:
                return handle.readline(len(header) + 2).rstrip("\r\n") == header
        except OSError:
            return False

    return test


def json_with_key(key: str) -> Callable[[Path], bool]:
    """An ``ours`` test: the file is a JSON object with ``key`` (read at most 64 MB)."""

    def test(path: Path) -> bool:
        import json

        try:
            if path.stat().st_size > 64 * 2**20:
                return False
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(value, dict) and key in value

    return test


def text_contains(marker: str, limit: int = 4096) -> Callable[[Path], bool]:
    """An ``ours`` test: the first ``limit`` characters of the file hold ``marker``."""

    def test(path: Path) -> bool:
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                return marker in handle.read(limit)
        except OSError:
            return False

    return test


def cut_torn_line(path: Path) -> bool:
    """Cut a last line without its newline off ``path`` (a killed run's half-written record) before appending, or it
    would swallow the next record; returns whether it cut. Only call it on a file the command knows is its own
    (:func:`is_records_file`)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    with path.open("r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)
    return True


def is_records_file(path: Path, keys: set[str], first_key: str = "video") -> bool:
    """Whether ``path`` holds JSON-lines records a command of vau appends to (and may resume): every complete line an
    object with ``keys`` (blank lines allowed), and a last line without its newline (a killed run's torn record, cut
    before appending) only when it starts like one of those records (``{"<first_key>":``). A file of other text,
    even one line without a newline, is not one: cutting its "torn" line would destroy it.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = f.write_text('{"video": "a.mp4", "frame_scores": [1]}\\n{"video": "b.mp')
    >>> is_records_file(f, {"video", "frame_scores"}), is_records_file(f.with_name("none"), {"video"})
    (True, False)
    >>> _ = f.write_text("my notes, no newline")
    >>> is_records_file(f, {"video"})
    False
    """
    import json

    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return False
    for line in lines:
        if not line.endswith("\n"):
            return line.lstrip().startswith(f'{{"{first_key}":')
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return False
        if not isinstance(record, dict) or not keys <= set(record):
            return False
    return True


def json_safe(value):
    """``value`` with every non-finite float (NaN, +-inf: e.g. a mean over no rows) replaced by None, so the JSON a
    command writes is valid for every reader (``json.dumps`` would write the non-standard ``NaN``).

    Example:
        >>> json_safe({"miou": float("nan"), "n": [1.0, float("inf")]})
        {'miou': None, 'n': [1.0, None]}
    """
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
