"""``python -m vau score annotations=FILE predictions=FILE [task=qa|tag|cls|cls_binary] [output=metrics.json]``.

Scores a predictions file against a VAU-Bench annotation CSV with the metrics of :mod:`vau.metrics` and prints
the paper's table (percent, two decimals) with the denominator n of every number.

Predictions are either JSON lines, one object per reply (what ``python -m vau test`` writes)::

    {"video": "Assault_2.mp4", "task": "qa", "response": "<think>...</think><answer>A</answer>"}

or a VAU-R1 style CSV: a ``Video Name`` column plus one or more of ``QA answer`` (qa), ``Temporal Grounding``
(tag) and ``CLS answer`` / ``Classification`` / ``Anomaly Class`` (cls). Several files may be given separated
by commas, or as a glob (``predictions='run/predictions_rank*.jsonl'``).

Protocol: every annotation row a task keeps is in its denominator; one without a prediction counts as wrong (an
empty reply). A prediction for a video the annotations do not contain is reported and ignored. For a video
predicted twice, the first reply counts (DDP samplers repeat samples to even out the ranks).

Example (shell)::

    python -m vau score annotations=test_msad.csv predictions=outputs/demo/RUN/predictions_rank0.jsonl task=qa
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from vau.datamodules.annotations import Annotation, AnnotationError, read_annotations
from vau.metrics import task_metrics
from vau.parsing import canonical_class
from vau.tasks import ANOMALY_CLASSES, get_task, task_names


def scored_tasks() -> list[str]:
    """Every registered task whose replies have a ground truth to score (plugin tasks included)."""
    return [n for n in task_names() if get_task(n).scored]


KEYS = ("annotations", "predictions", "task", "output")
USAGE = ("usage: python -m vau score annotations=FILE.csv predictions=FILE.jsonl|FILE.csv[,FILE...] "
         "[task=NAME[,NAME...]] [output=metrics.json]")
CSV_COLUMNS = {"qa answer": "qa", "temporal grounding": "tag", "cls answer": "cls", "classification": "cls",
               "anomaly class": "cls"}
LABELS = {"qa_accuracy": "Acc.", "tag_miou": "mIoU", "tag_r30": "R@0.3", "tag_r50": "R@0.5", "tag_r70": "R@0.7",
          "tag_false_alarm": "FA(normal)", "cls_binary_accuracy": "Bin.Acc.", "cls_accuracy": "Acc.",
          "cls_macro_f1": "MacroF1", "format_rate": "Format"}
SHOW = 5  # example names listed per coverage problem


class ScoreError(ValueError):
    """Bad arguments or input files; the message names the file/row/key and what to do."""


@dataclass(frozen=True)
class Prediction:
    video: str
    task: str
    response: str
    where: str  # "file, line N" for messages


# ----------------------------------------------------------------------------------------------- reading ----
def parse_args(argv: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS:
            raise ScoreError(f"unknown argument {arg!r}; score takes {', '.join(k + '=' for k in KEYS)}\n{USAGE}")
        args[key] = value
    missing = [k for k in ("annotations", "predictions") if not args.get(k)]
    if missing:
        raise ScoreError(f"missing {' and '.join(k + '=FILE' for k in missing)}\n{USAGE}")
    tasks = [t.strip() for t in args.get("task", "").split(",") if t.strip()]
    bad = [t for t in tasks if t not in scored_tasks()]
    if bad:
        raise ScoreError(f"task={args['task']}: {bad[0]!r} is not one of {', '.join(scored_tasks())}")
    return args


def prediction_files(spec: str) -> list[Path]:
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        matches = sorted(glob.glob(part)) if any(ch in part for ch in "*?[") else [part]
        if not matches:
            raise ScoreError(f"predictions={part}: no file matches this pattern")
        for match in matches:
            if not Path(match).is_file():
                raise ScoreError(f"predictions file {match} does not exist; pass predictions=PATH to a .jsonl or .csv")
            paths.append(Path(match))
    return paths


def read_predictions(path: Path) -> list[Prediction]:
    """Read one JSON-lines or CSV predictions file (chosen by its first non-blank character/header)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ScoreError(f"predictions file {path} cannot be read as UTF-8 text: {err}") from None
    first = text.lstrip()[:1]
    rows = _read_csv(path, text) if first and first not in "{[" else _read_jsonl(path, text)
    if not rows:
        raise ScoreError(f"predictions file {path} holds no predictions")
    return rows


def _read_jsonl(path: Path, text: str) -> list[Prediction]:
    shape = '{"video": "name.mp4", "task": "qa", "response": "<answer>B</answer>"}'
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScoreError(f"{where}: not valid JSON ({err.msg}); each line must be one object like {shape}") from None
        if not isinstance(record, dict):
            raise ScoreError(f"{where}: expected a JSON object like {shape}")
        for key in ("video", "task", "response"):
            if key not in record:
                raise ScoreError(f"{where}: missing key {key!r}; each line needs video, task and response")
        if record["task"] not in scored_tasks():
            raise ScoreError(f"{where}: task {record['task']!r} is not one of {', '.join(scored_tasks())}")
        if not isinstance(record["video"], str) or not record["video"].strip():
            raise ScoreError(f"{where}: key 'video' must be a non-empty file name string")
        if not isinstance(record["response"], str):
            raise ScoreError(f"{where}: key 'response' must be a string (use \"\" for no answer)")
        rows.append(Prediction(record["video"].strip(), record["task"], record["response"], where))
    return rows


def _read_csv(path: Path, text: str) -> list[Prediction]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    lowered = [h.lower() for h in header]
    if "video name" not in lowered:
        raise ScoreError(f"{path}: a CSV of predictions needs a 'Video Name' column (found {header}); "
                         f"or write JSON lines like {{\"video\": ..., \"task\": ..., \"response\": ...}}")
    columns = {i: CSV_COLUMNS[h] for i, h in enumerate(lowered) if h in CSV_COLUMNS}
    if not columns:
        raise ScoreError(f"{path}: no answer column; a VAU-R1 style CSV has 'QA answer', 'Temporal Grounding' "
                         f"and/or 'CLS answer' next to 'Video Name' (found {header})")
    name_at = lowered.index("video name")
    rows = []
    for record in reader:
        if not any(cell.strip() for cell in record):
            continue
        where = f"{path}, line {reader.line_num}"
        if len(record) > len(header):
            raise ScoreError(f"{where}: {len(record)} fields for {len(header)} columns; quote answers containing commas")
        record = record + [""] * (len(header) - len(record))
        video = record[name_at].strip()
        if not video:
            raise ScoreError(f"{where}, column 'Video Name': empty")
        rows += [Prediction(video, task, record[i], where) for i, task in columns.items()]
    return rows


# ----------------------------------------------------------------------------------------------- scoring ----
def _lookup(annotations: list[Annotation]):
    exact = {a.video: a for a in annotations}
    by_stem = {Path(a.video).stem: a for a in annotations}
    return lambda name: exact.get(name) or by_stem.get(Path(name).stem)


def class_list(annotations: list[Annotation]) -> tuple[str, ...]:
    """vau.tasks.ANOMALY_CLASSES plus any class of the file it does not spell (so per-class covers every row)."""
    extra = sorted({a.anomaly_class for a in annotations
                    if a.anomaly_class and canonical_class(a.anomaly_class, ANOMALY_CLASSES) is None})
    return (*ANOMALY_CLASSES, *dict.fromkeys(extra))


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else round(100.0 * value, 2)


def score(annotations: list[Annotation], predictions: list[Prediction], tasks: list[str]) -> dict:
    """Compute every metric of ``tasks``; returns the report (values in percent) that ``format_report`` prints."""
    find = _lookup(annotations)
    replies: dict[tuple[str, str], str] = {}
    unknown: list[str] = []
    duplicates = conflicting = 0
    for p in predictions:
        ann = find(p.video)
        if ann is None:
            unknown.append(p.video)
            continue
        key = (ann.video, p.task)
        if key in replies:
            duplicates += 1
            conflicting += replies[key] != p.response
            continue
        replies[key] = p.response
    classes = class_list(annotations)
    report: dict = {"tasks": {}, "unknown_videos": sorted(set(unknown)), "duplicates": duplicates,
                    "conflicting_duplicates": conflicting}
    for task in tasks:
        spec = get_task(task)
        kept = [a for a in annotations if spec.has_truth(a)]
        samples = [spec.sample(a) for a in kept]
        completions = [replies.get((a.video, task), "") for a in kept]
        missing = [a.video for a in kept if (a.video, task) not in replies]
        unscored = sorted(v for v, t in replies if t == task and not spec.has_truth(find(v)))
        metrics = task_metrics(task, classes)
        per_class = spec.per_class_metric(classes)
        entry: dict = {"metrics": {}, "rows": len(kept), "missing": missing, "no_ground_truth": unscored}
        for name, metric in metrics.items():
            metric.update(completions, samples)
            entry["metrics"][name] = {"value": _percent(float(metric.compute())), "n": int(metric.total)}
        if per_class is not None:
            per_class.update(completions, samples)
            recall, support = per_class.compute().tolist(), per_class.support().tolist()
            entry["per_class"] = {c: {"value": _percent(r), "n": int(n)}
                                  for c, r, n in zip(classes, recall, support) if n > 0}
        report["tasks"][task] = entry
    return report


def _names(names: list[str]) -> str:
    return ", ".join(names[:SHOW]) + (f", ... ({len(names) - SHOW} more)" if len(names) > SHOW else "")


def format_report(report: dict, title: str) -> str:
    """The paper's layout: one block per task, metrics as columns, a value row (percent) and an n row."""
    lines = [title]
    for task, entry in report["tasks"].items():
        names = [k for k in entry["metrics"] if k != "format_rate"] + ["format_rate"]
        width = max(10, *(len(LABELS.get(k, k)) + 2 for k in names))
        lines.append("")
        lines.append(f"{task.upper():<8}" + "".join(f"{LABELS.get(k, k):>{width}}" for k in names))
        values = [entry["metrics"][k]["value"] for k in names]
        lines.append(f"{'  %':<8}" + "".join(f"{'-' if v is None else f'{v:.2f}':>{width}}" for v in values))
        lines.append(f"{'  n':<8}" + "".join(f"{entry['metrics'][k]['n']:>{width}}" for k in names))
        if entry.get("per_class"):
            lines.append("  per-class accuracy:")
            lines += [f"    {c:<24}{v['value']:>8.2f}  n={v['n']}" for c, v in entry["per_class"].items()]
    lines.append("")
    lines.append("Coverage:")
    for task, entry in report["tasks"].items():
        missing = entry["missing"]
        lines.append(f"  {task}: {entry['rows'] - len(missing)}/{entry['rows']} annotation rows predicted"
                     + (f"; {len(missing)} without a prediction, counted wrong: {_names(missing)}" if missing else ""))
        if entry["no_ground_truth"]:
            lines.append(f"  {task}: {len(entry['no_ground_truth'])} predictions for rows without {task} ground "
                         f"truth, not scored: {_names(entry['no_ground_truth'])}")
    if report["unknown_videos"]:
        lines.append(f"  {len(report['unknown_videos'])} predicted videos are not in the annotations, ignored: "
                     f"{_names(report['unknown_videos'])}")
    if report["duplicates"]:
        lines.append(f"  {report['duplicates']} repeated predictions ({report['conflicting_duplicates']} with a "
                     f"different reply); the first of each counts")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run the score stage; returns the process exit code (2 for bad arguments or input)."""
    try:
        args = parse_args(list(argv))
        if not Path(args["annotations"]).is_file():
            raise ScoreError(f"annotation file {args['annotations']} does not exist; pass annotations=PATH to a "
                             f"VAU-Bench CSV (e.g. test_msad.csv)")
        annotations = read_annotations(args["annotations"])
        if not annotations:
            raise ScoreError(f"annotation file {args['annotations']} has no rows")
        files = prediction_files(args["predictions"])
        predictions = [p for path in files for p in read_predictions(path)]
        tasks = [t.strip() for t in args.get("task", "").split(",") if t.strip()]
        predicted_tasks = {p.task for p in predictions}
        tasks = tasks or [t for t in scored_tasks() if t in predicted_tasks]
        report = score(annotations, predictions, tasks)
        report.update(annotations=str(args["annotations"]), predictions=[str(f) for f in files])
        title = (f"VAU-Bench scores (percent) of {', '.join(f.name for f in files)} against "
                 f"{Path(args['annotations']).name} ({len(annotations)} rows)")
        print(format_report(report, title))
        if args.get("output"):
            out = Path(args["output"])
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(report, indent=2) + "\n")
            except OSError as err:
                raise ScoreError(f"output={out}: cannot write the metrics file: {err}") from None
            print(f"metrics written to {out}")
        return 0
    except (ScoreError, AnnotationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
