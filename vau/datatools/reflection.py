"""Reflection chains for the reflect tasks (SRVAU-R1): builders, and ``python -m vau data reflect``.

A *reflection chain* (:class:`vau.tasks.reflect.Chain`) is what a reflect task's SFT target says before its final
answer: an initial reasoning and answer, a self-reflection and a revised reasoning. SRVAU-R1 trains on a
reflection-oriented chain-of-thought dataset; VAU-Bench's annotations have none, so a builder writes them:

- ``template`` (built in, offline, deterministic from a seed): *corrective* chains, whose initial answer is a
  plausible wrong one (a distractor option for QA, a shifted or shrunk interval for TAG, a confusable class for CLS,
  the opposite call for binary CLS), whose initial reasoning supports it, whose reflection cites the annotated
  evidence (key object, description, rationale) that contradicts it, and whose revised reasoning is the annotated
  rationale; and *confirming* chains, whose initial answer is right and whose reflection checks it against the
  evidence and keeps it. ``corrective_ratio`` (default 0.5, i.e. 1:1) is the exact share of corrective chains
  among each task's rows.
- ``teacher`` (:mod:`vau.datatools.teacher`): the same initial answers and reasoning as ``template``; a language
  model (a local transformers checkpoint or an OpenAI-compatible endpoint) writes the reflection and the revised
  reasoning, each reply validated (failures counted by reason). Builders register in
  :data:`vau.registry.REFLECTORS`: a :class:`ReflectionBuilder` subclass (``build`` per sample, or ``build_many``
  to batch).

Two ways to use the chains:

- ``python -m vau data reflect annotations=FILE out=FILE [builder=template] [seed=0] [corrective_ratio=0.5]
  [tasks=qa_reflect,...]`` writes the annotation CSV (every cell as read) with the columns of
  :data:`vau.tasks.reflect.CHAIN_COLUMNS` added: one row per (annotation row, reflect task that keeps it), so a row
  kept by four reflect tasks appears four times, each with the chain of the task named in ``Chain Task``; a row no
  reflect task keeps appears once with empty chain columns. Each reflect task keeps only its own rows, so point
  the reflect tasks at this file and the other tasks (and ``data stats`` counts of them) at the original.
- ``data.reflect: {builder: template, seed: ..., corrective_ratio: ...}`` in a config: the DataModule builds the
  chains in memory for the reflect tasks of its view, on every split (:func:`attach_chains`); the rows are not
  duplicated. The demo reflect experiments use this on the generated benchmark.
"""

from __future__ import annotations

import csv
import random
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from vau.config import ConfigError, key_values
from vau.data.annotations import LETTERS, Annotation, AnnotationError
from vau.data.readers import read_rows
from vau.registry import REFLECTORS, TASKS
from vau.tasks import Sample, Task, get_task
from vau.tasks.base import DEFAULT_VIEWS, ViewOptions
from vau.tasks.reflect import CHAIN_COLUMNS, CHAINS_KEY, CONFIRMING, CORRECTIVE, DISTRACTOR_KEY, Chain, ReflectMixin

FAILED = "failed"


def reflect_tasks() -> list[str]:
    """Every registered reflect task (built-in and plugin), by name."""
    return [n for n in TASKS.names() if isinstance(get_task(n), ReflectMixin)]


class ReflectionBuilder:
    """Builds one chain for a (reflect task, sample); subclasses override :meth:`build`.

    Keyword arguments of ``data.reflect`` / the command line other than builder, seed and corrective_ratio reach
    the constructor.
    """

    def __init__(self, **kwargs) -> None:
        self.options = kwargs
        self.failures: Counter = Counter()  # why chains failed ({reason: n}), printed by `data reflect`
        self.output: Path | None = None

    def bind_output(self, out: str | Path) -> None:
        """Told where ``data reflect`` writes (a builder may keep its files, e.g. a cache, next to it)."""
        self.output = Path(out)

    def build(self, task: Task, sample: Sample, corrective: bool, rng: random.Random) -> Chain | None:
        """A corrective (wrong initial answer) or confirming chain, or None when this sample gets none."""
        raise NotImplementedError

    def build_many(self, requests: Sequence[tuple[Task, Sample, bool, random.Random]]) -> list[Chain | None]:
        """One chain per ``(task, sample, corrective, rng)``, in order; a corrective request the builder cannot
        serve gets a confirming chain (same rng). Builders that ask a model override this to batch the requests."""
        out = []
        for task, sample, corrective, rng in requests:
            chain = self.build(task, sample, True, rng) if corrective else None
            out.append(chain if chain is not None else self.build(task, sample, False, rng))
        return out




def distractor_of(ann: Annotation) -> dict[str, object] | None:
    """The row's distractor columns (the demo generator's ``Distractor Option/Class/Start/End``), or None.

    Returns a dict with ``option`` (a letter or ""), ``class`` (a class name or "") and ``interval`` ((start, end)
    seconds or None): the event a first glance may mistake for the answer, which corrective chains then use.
    """
    cells = {str(k).strip().lower(): str(v).strip() for k, v in (ann.extra or {}).items() if isinstance(v, str)}
    option, cls = cells.get("distractor option", "").upper(), cells.get("distractor class", "")
    try:
        interval = (float(cells["distractor start"]), float(cells["distractor end"]))
    except (KeyError, ValueError):
        interval = None
    if interval is not None and not 0.0 <= interval[0] < interval[1]:
        interval = None
    if not (option in LETTERS or cls or interval):
        return None
    return {"option": option if option in LETTERS else "", "class": cls, "interval": interval}


@REFLECTORS.register("template")
class TemplateBuilder(ReflectionBuilder):
    """Offline chains from the annotation: a plausible wrong first answer corrected by the annotated evidence, or a
    right one confirmed by it (deterministic from the seed)."""

    def build(self, task: Task, sample: Sample, corrective: bool, rng: random.Random) -> Chain | None:
        if task.truth(sample) is None:
            return None
        if not corrective:
            return task.confirming_chain(sample)
        made = task.plausible_mistake(sample, rng)  # each reflect task knows what a first glance gets wrong
        return None if made is None else task.corrective_chain(sample, made)


def _keeps(task: Task, ann: Annotation, views: ViewOptions) -> bool:
    """Rows a reflect task uses for training or for evaluation (a chain file serves either split)."""
    return task.keeps(ann, True, views) or task.keeps(ann, False, views)


def build_chains(rows: Sequence[Annotation], tasks: Iterable[str] | None = None, builder: str = "template",
                 seed: int = 0, corrective_ratio: float = 0.5, views: ViewOptions = DEFAULT_VIEWS,
                 output: str | Path | None = None,
                 **builder_kwargs) -> tuple[dict[tuple[int, str], Chain | None], Counter]:
    """One chain per (row, reflect task that keeps the row).

    Per task, an exact ``corrective_ratio`` share of its rows (chosen by a seeded shuffle) is asked for a corrective
    chain; when the builder cannot make one (no plausible wrong answer) the row gets a confirming chain, and when it
    can make neither the row is counted as failed (its chain is None: the task's target falls back to a confirming
    chain built from the annotation).

    Returns:
        ``{(row index, task): chain or None}`` and the counts ``Counter({(task, kind): n})`` with kind
        ``corrective`` / ``confirming`` / ``failed``, plus ``("reason", why): n`` for failed chains whose builder
        said why (:attr:`ReflectionBuilder.failures`; none with ``template``).
    """
    ratio = float(corrective_ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"corrective_ratio={corrective_ratio}: give a share between 0 and 1")
    maker = make_builder(builder, output, **builder_kwargs)
    names = reflect_tasks() if tasks is None else [t for t in tasks if isinstance(get_task(t), ReflectMixin)]
    where: list[tuple[int, str]] = []
    requests = []
    for name in names:
        task = get_task(name)
        kept = [i for i, ann in enumerate(rows) if _keeps(task, ann, views)]
        order = list(kept)
        random.Random(f"{seed}:{name}").shuffle(order)
        corrective = set(order[: round(ratio * len(order))])
        for index in kept:
            where.append((index, name))
            sample = task.sample(rows[index])
            seen = distractor_of(rows[index])
            if seen is not None:
                sample = replace(sample, extra={**sample.extra, DISTRACTOR_KEY: seen})
            requests.append((task, sample, index in corrective, random.Random(f"{seed}:{name}:{index}")))
    built = maker.build_many(requests)
    chains: dict[tuple[int, str], Chain | None] = dict(zip(where, built))
    counts: Counter = Counter()
    for (_, name), chain in chains.items():
        counts[(name, chain.kind if chain is not None else FAILED)] += 1
    counts.update({("reason", reason): n for reason, n in maker.failures.items()})
    return chains, counts


def make_builder(builder: str, output: str | Path | None = None, **builder_kwargs) -> ReflectionBuilder:
    """The registered builder ``builder`` with its options, told where the chains go (when known)."""
    maker = REFLECTORS.get(builder)(**builder_kwargs)
    if output is not None:
        maker.bind_output(output)
    return maker


def attach_chains(rows: Sequence[Annotation], tasks: Iterable[str] | None = None, **options) -> list[Annotation]:
    """``rows`` with their chains in ``Annotation.extra`` (the in-memory form the reflect tasks read); rows of no
    reflect task are returned as they are. ``options`` are those of :func:`build_chains`."""
    chains, _ = build_chains(rows, tasks, **options)
    by_row: dict[int, dict[str, Chain]] = {}
    for (index, name), chain in chains.items():
        if chain is not None:
            by_row.setdefault(index, {})[name] = chain
    return [replace(ann, extra={**ann.extra, CHAINS_KEY: by_row[i]}) if i in by_row else ann
            for i, ann in enumerate(rows)]


def _raw_records(path: Path) -> tuple[list[str], dict[int, list[str]]]:
    """Header and the records of a CSV by the row numbers :func:`vau.data.readers.read_rows` gives them."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        records = {line: record for line, record in enumerate(reader, start=2) if any(c.strip() for c in record)}
    return header, records


def reflect_file(annotations: str | Path, out: str | Path, builder: str = "template", seed: int = 0,
                 corrective_ratio: float = 0.5, tasks: Iterable[str] | None = None,
                 views: ViewOptions = DEFAULT_VIEWS, **builder_kwargs) -> Counter:
    """Write ``annotations`` with reflection chains to ``out`` (see the module doc); returns the counts."""
    source = Path(annotations)
    rows = read_rows(source, "vau_bench")  # the tool rewrites this CSV with chain columns: VAU-Bench CSV only
    chains, counts = build_chains(rows, tasks, builder, seed, corrective_ratio, views, output=out, **builder_kwargs)
    header, records = _raw_records(source)
    chain_keys = {c.lower() for c in CHAIN_COLUMNS}
    keep = [i for i, h in enumerate(header) if h.strip().lower() not in chain_keys]  # a re-run replaces old chains
    columns = [header[i].strip() for i in keep] + list(CHAIN_COLUMNS)
    by_row: dict[int, list[tuple[str, Chain | None]]] = {}
    for (index, name), chain in chains.items():
        by_row.setdefault(index, []).append((name, chain))
    out_rows = []
    for index, ann in enumerate(rows):
        cells = dict(zip(columns, (records[ann.row][i] for i in keep)))
        for name, chain in by_row.get(index) or [("", None)]:
            chain_cells = chain.columns() if chain is not None else dict.fromkeys(CHAIN_COLUMNS, "")
            if chain is None and name:
                chain_cells["Chain Task"] = name  # failed: the task keeps the row and falls back to confirming
            out_rows.append({**cells, **chain_cells})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(out_rows)
    return counts


def format_counts(counts: Counter) -> str:
    """``task: N corrective, N confirming, N failed`` lines, then the totals."""
    names = sorted({task for task, _ in counts if task != "reason"})
    kinds = (CORRECTIVE, CONFIRMING, FAILED)
    lines = [f"  {name}: " + ", ".join(f"{counts[(name, k)]} {k}" for k in kinds) for name in names]
    lines.append("  total: " + ", ".join(f"{sum(counts[(n, k)] for n in names)} {k}" for k in kinds))
    reasons = sorted((reason, n) for (task, reason), n in counts.items() if task == "reason" and n)
    if reasons:
        lines.append("  failed because: " + ", ".join(f"{n} {reason}" for reason, n in reasons))
    return "\n".join(lines)


USAGE = ("usage: python -m vau data reflect annotations=FILE out=FILE [builder=template|teacher] [seed=0] "
         "[corrective_ratio=0.5] [tasks=qa_reflect,tag_reflect,...] [KEY=VALUE: builder options]\n"
         "  builder=teacher: teacher.path=DIR | teacher.base_url=URL teacher.model=NAME "
         "[teacher.api_key_env=OPENAI_API_KEY] [teacher.concurrency=4] [teacher.retries=3] [teacher.cache=FILE] "
         "[teacher.max_new_tokens=512]")


def main(argv: list[str]) -> int:
    """``python -m vau data reflect ...``: returns the exit code (2 for bad arguments or input)."""
    try:
        args = key_values(argv, required=("annotations", "out"))  # the other keys are the builder's options
    except ConfigError as err:
        print(f"error: {err}\n{USAGE}", file=sys.stderr)
        return 2
    annotations, out = args.pop("annotations"), args.pop("out")
    builder = args.pop("builder", "template")
    try:
        seed = int(args.pop("seed", 0))
        ratio = float(args.pop("corrective_ratio", 0.5))
        tasks = [t for t in args.pop("tasks", "").split(",") if t] or None
        for name in tasks or ():
            if not isinstance(get_task(name), ReflectMixin):
                raise ValueError(f"tasks={name}: not a reflect task; reflect tasks: {', '.join(reflect_tasks())}")
        counts = reflect_file(annotations, out, builder, seed, ratio, tasks, **args)
    except (AnnotationError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"reflection chains (builder={builder}, seed={seed}, corrective_ratio={ratio}) for {annotations} -> {out}")
    print(format_counts(counts))
    return 0
