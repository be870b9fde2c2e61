"""``python -m vau data stats`` and ``python -m vau data check``: look at annotations and videos without training.

- :func:`stats_report`: per file (split), per source, the kept count of every task view, what was left out
  and why, the normalisations applied, and the class histogram.
- :func:`check_videos`: resolves every video of the annotation files and opens it: lists the missing,
  unreadable and frame-less ones.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vau.data.annotations import Annotation, summarize
from vau.data.readers import read_rows
from vau.datamodules.dataset import VideoResolver
from vau.datamodules.video import VideoError, probe
from vau.datamodules.views import ViewOptions, drop_counts, view_counts
from vau.tasks import task_names


def split_of(path: str | Path) -> str:
    """``train`` / ``val`` / ``test`` from a file name (``test_msad.csv`` -> ``test``), else ``""``."""
    stem = Path(path).stem.lower()
    return next((s for s in ("train", "val", "test") if s in stem), "")


def _table(header: list[str], rows: list[list]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths)))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def stats_report(files: list[tuple[str, str]], options: ViewOptions | None = None, format: str | None = None) -> str:  # noqa: A002
    """Text report over annotation files.

    Args:
        files: (split, CSV path) pairs; split is ``train`` / ``val`` / ``test`` or "" when unknown. A train
            split is counted with the training rules, every other split with the evaluation rules.
        options: ``data.views``.
        format: the annotation format (``data.format``; :func:`vau.data.readers.read_rows`).
    """
    options = options or ViewOptions()
    out = []
    tasks = task_names()
    for split, path in files:
        rows = read_rows(path, format)
        train = split == "train"
        rules = "training" if train else "evaluation"
        out.append(f"== {path}: split {split or '?'}, {len(rows)} rows, kept samples per task view ({rules} rules)")
        by_source: dict[str, list[Annotation]] = {}
        for a in rows:
            by_source.setdefault(a.source or "?", []).append(a)
        table = []
        for source, members in sorted(by_source.items()):
            counts = view_counts(members, train, options)
            table.append([source, len(members), *(counts[t] for t in tasks)])
        total = view_counts(rows, train, options)
        table.append(["all", len(rows), *(total[t] for t in tasks)])
        out += _table(["source", "rows", *tasks], table)
        other = view_counts(rows, not train, options)
        differs = [f"{t}={other[t]}" for t in tasks if other[t] != total[t]]
        if differs:
            out.append(f"with the {'evaluation' if train else 'training'} rules: " + ", ".join(differs))
        for task in tasks:
            dropped = drop_counts(rows, task, train, options)
            if dropped:
                out.append(f"left out of {task}: " + ", ".join(f"{n} {why}" for why, n in dropped.most_common()))
        notes = summarize(rows)
        if notes:
            out.append("normalised: " + ", ".join(f"{k}={v}" for k, v in sorted(notes.items())))
        normal = sum(a.is_normal for a in rows)
        unknown = sum(not a.anomaly_class for a in rows)
        out.append(f"videos: {len({a.video for a in rows})} ({len(rows) - normal - unknown} anomalous, {normal} normal"
                   + (f", {unknown} without a class)" if unknown else ")"))
        classes = Counter(a.anomaly_class or "(empty)" for a in rows)
        out.append(f"classes ({len(classes)}): " + ", ".join(f"{c} {n}" for c, n in classes.most_common()))
        out.append("")
    return "\n".join(out)


@dataclass
class CheckResult:
    """Outcome of :func:`check_videos`: ``problems[reason]`` lists (video name, path, message)."""

    checked: int = 0
    seconds: float = 0.0
    problems: dict[str, list[tuple[str, str, str]]] = field(
        default_factory=lambda: {"missing": [], "unreadable": [], "no_frames": []})

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def report(self) -> str:
        bad = sum(len(v) for v in self.problems.values())
        lines = [f"checked {self.checked} videos: {self.checked - bad} usable ({self.seconds / 3600:.2f} h), "
                 f"{bad} not"]
        for reason, items in self.problems.items():
            if items:
                lines.append(f"{reason} ({len(items)}):")
                lines += [f"  {name} -> {path}: {message}" for name, path, message in items]
        return "\n".join(lines)


def check_videos(files: list[str], resolver: VideoResolver, workers: int = 2, decoder: str = "pyav",
                 format: str | None = None) -> CheckResult:  # noqa: A002
    """Open every distinct video named in ``files`` (first and last frame decoded with ``decoder``); nothing is
    trained."""
    videos: dict[str, tuple[str, str]] = {}
    for path in files:
        for a in read_rows(path, format):
            videos.setdefault(str(resolver(a.video, a.source)), (a.video, path))
    result = CheckResult(checked=len(videos))

    def one(item: tuple[str, tuple[str, str]]):
        path, (name, _) = item
        try:
            return name, path, probe(path, decoder), None
        except VideoError as err:
            return name, path, None, err

    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        for name, path, info, err in pool.map(one, sorted(videos.items())):
            if err is not None:
                result.problems[err.reason].append((name, path, str(err)))
            else:
                result.seconds += info["seconds"]
    return result
