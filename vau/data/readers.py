"""Annotation formats: every file of annotation rows is read by a registered reader (``data.format``).

A reader is a callable ``path -> list[Annotation]`` registered in :data:`vau.registry.READERS`. Everything that
reads annotation rows (the data module, ``score``, ``judge``, ``predict``, ``data stats``, ``data reflect``) calls
:func:`read_rows`, so a new format (another benchmark's CSV, a JSON list) is one plugin file::

    from vau.data import Annotation
    from vau.registry import READERS

    @READERS.register("my_json")
    def my_json(path):
        "Rows of my JSON list."
        return [Annotation(video=r["video"], ...) for r in json.load(open(path))]

and ``data.format: my_json`` (or ``format=my_json`` on the command line of ``score``/``judge``/``predict``).

Example:
    >>> read_rows("missing.csv", format="no_such_format")
    Traceback (most recent call last):
    ...
    vau.registry.RegistryError: unknown annotation format 'no_such_format'. ...
"""

from __future__ import annotations

from pathlib import Path

from vau.data.annotations import Annotation, AnnotationError, read_annotations
from vau.registry import READERS

DEFAULT_FORMAT = "vau_bench"


@READERS.register("vau_bench")
def vau_bench(path: str | Path) -> list[Annotation]:
    """VAU-Bench CSV (VAU-R1's 13 columns; extra columns kept in ``Annotation.extra``): docs/data.md."""
    return read_annotations(path)


def read_rows(path: str | Path, format: str | None = None) -> list[Annotation]:  # noqa: A002  (the config key's name)
    """The annotation rows of ``path`` read by the reader registered as ``format`` (default ``vau_bench``).

    Raises:
        AnnotationError: the reader returned something other than a list of :class:`Annotation` (names the file).
        RegistryError: no reader of that name (lists the known ones).
    """
    name = str(format or DEFAULT_FORMAT)
    rows = READERS.get(name)(path)
    if not isinstance(rows, list) or not all(isinstance(row, Annotation) for row in rows):
        raise AnnotationError(f"{path}: the {name!r} annotation reader returned {type(rows).__name__}, not a list of "
                              f"vau.data.Annotation rows; fix the reader registered as {name!r}")
    return rows
