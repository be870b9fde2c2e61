"""``python -m vau score annotations=FILE predictions=FILE [task=qa|tag|cls|cls_binary] [report=DIR] [output=FILE]``.

Scores a predictions file against a VAU-Bench annotation CSV with the metrics of :mod:`vau.metrics` and prints
the paper's tables (percent, two decimals; rows = MSAD / UCF-Crime / ECVA / overall) with the denominator n of
every number, the answer-position table of QA (raw and circular accuracy beside the constant-letter baselines), the
CLS confusion matrix and the TAG IoU histogram (:mod:`vau.eval.report`, docs/scoring.md). ``report=DIR`` writes
DIR/score.json, DIR/score.md and the PNG plots; ``output=FILE`` writes the same JSON as score.json to FILE.

Predictions are either JSON lines, one object per reply (what ``python -m vau test`` writes)::

    {"video": "Assault_2.mp4", "task": "qa", "response": "<think>...</think><answer>A</answer>"}

optionally with ``shift`` (QA asked with its options rotated by k: reply letter j answers original option
(j + k) mod n), ``options`` (as asked), ``frame_times``, ``video_path`` and ``duration`` (copied to the clip list),

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
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vau.config import flag, key_values
from vau.data.annotations import Annotation, AnnotationError
from vau.data.caption_annotations import LEVEL
from vau.data.readers import read_rows
from vau.eval.frame_curves import write_frame_page
from vau.eval.frame_score import FrameScoreError, format_frame_report, frame_report, read_frame_scores
from vau.eval.html_report import HTML_MARKER, write_html_report
from vau.eval.report import ReportError, evaluate
from vau.eval.report_plots import write_plots
from vau.eval.report_tables import report_tables
from vau.outputs import check_output, json_safe, json_with_key, text_contains
from vau.parsing import canonical_class
from vau.registry import load_plugins
from vau.tasks import ANOMALY_CLASSES, get_task, task_names


def scored_tasks() -> list[str]:
    """Every registered task whose replies ``score`` reports (plugin tasks included): those with an answer to score,
    and text tasks with description metrics (``describe``)."""
    return [n for n in task_names() if get_task(n).reported]


KEYS = ("annotations", "predictions", "task", "report", "output", "overwrite", "format", "plugins", "frame_scores",
        "level")
USAGE = ("usage: python -m vau score annotations=FILE.csv predictions=FILE.jsonl|FILE.csv[,FILE...] "
         "[task=NAME[,NAME...]] [report=DIR] [output=metrics.json] [format=vau_bench] [plugins=MODULE[,MODULE...]] "
         "[level=video]\n"
         "       python -m vau score annotations=FILE format=ucf_crime|xd_violence frame_scores=FILE.jsonl "
         "[output=metrics.json]   (frame-level AUC / AP, vau.eval.frame_score)")
CSV_COLUMNS = {"qa answer": "qa", "temporal grounding": "tag", "cls answer": "cls", "classification": "cls",
               "anomaly class": "cls"}
SHOW = 5  # example names listed per coverage problem


class ScoreError(ValueError):
    """Bad arguments or input files; the message names the file/row/key and what to do."""


@dataclass(frozen=True)
class Prediction:
    video: str
    task: str
    response: str
    where: str  # "file, line N" for messages
    record: dict = field(default_factory=dict, compare=False)  # the prediction record (JSON lines: every key)


# ----------------------------------------------------------------------------------------------- reading ----
def parse_args(argv: list[str]) -> dict[str, str]:
    args = key_values(argv, known=KEYS, error=ScoreError, usage=USAGE)
    missing = [k for k in ("annotations", "frame_scores" if args.get("frame_scores") else "predictions")
               if not args.get(k)]
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


class _NonStandardNumber(ValueError):
    pass


def _no_constant(name: str):
    raise _NonStandardNumber(name)


def _read_jsonl(path: Path, text: str) -> list[Prediction]:
    shape = '{"video": "name.mp4", "task": "qa", "response": "<answer>B</answer>"}'
    rows, tasks = [], scored_tasks()  # once per file: it builds the text tasks' metrics to see they have some
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as err:
            raise ScoreError(f"{where}: not valid JSON ({err.msg}); each line must be one object like {shape}") from None
        except _NonStandardNumber as err:
            raise ScoreError(f"{where}: {err} is not a JSON number (NaN/Infinity would make score.json invalid JSON); "
                             f"write null or a finite number") from None
        except RecursionError:
            raise ScoreError(f"{where}: JSON nested too deeply to read; each line must be one flat object like "
                             f"{shape}") from None
        if not isinstance(record, dict):
            raise ScoreError(f"{where}: expected a JSON object like {shape}")
        for key in ("video", "task", "response"):
            if key not in record:
                raise ScoreError(f"{where}: missing key {key!r}; each line needs video, task and response")
        if record["task"] not in tasks:
            raise ScoreError(f"{where}: task {record['task']!r} is not one of {', '.join(tasks)}")
        if not isinstance(record["video"], str) or not record["video"].strip():
            raise ScoreError(f"{where}: key 'video' must be a non-empty file name string")
        if not isinstance(record["response"], str):
            raise ScoreError(f"{where}: key 'response' must be a string (use \"\" for no answer)")
        _check_extras(record, where)
        record = {**record, "video": record["video"].strip()}
        rows.append(Prediction(record["video"], record["task"], record["response"], where, record))
    return rows


def _check_extras(record: dict, where: str) -> None:
    """The optional keys score reads must have the contract's types (a bad shift would mis-score silently)."""
    shift = record.get("shift")
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, int) or shift < 0):
        raise ScoreError(f"{where}: key 'shift' must be a non-negative integer (the cyclic option shift k), "
                         f"got {shift!r}")
    options = record.get("options")
    if options is not None and (not isinstance(options, list) or not all(isinstance(o, str) for o in options)):
        raise ScoreError(f"{where}: key 'options' must be a list of option texts as asked, got {options!r}")


def _read_csv(path: Path, text: str) -> list[Prediction]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _read_csv_rows(path, reader)
    except csv.Error as err:  # e.g. a cell over the csv module's field size limit
        raise ScoreError(f"{path}, line {reader.line_num}: not a readable CSV ({err})") from None


def _read_csv_rows(path: Path, reader) -> list[Prediction]:
    header = [h.strip() for h in next(reader, [])]
    lowered = [h.lower() for h in header]
    if "correct option" in lowered:
        raise ScoreError(f"{path} is an annotation file (it has the 'Correct Option' column), not "
                         f"predictions: scoring it against annotations would report the ground truth as a model's "
                         f"answers; pass predictions= the file predict or test wrote")
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
        rows += [Prediction(video, task, record[i], where, {"video": video, "task": task, "response": record[i]})
                 for i, task in columns.items()]
    return rows


# ----------------------------------------------------------------------------------------------- scoring ----
def _lookup(annotations: list[Annotation]):
    # The first row of a video name counts (duplicates are reported by duplicate_videos).
    exact: dict[str, Annotation] = {}
    by_stem: dict[str, Annotation] = {}
    for a in annotations:
        exact.setdefault(a.video, a)
        by_stem.setdefault(Path(a.video).stem, a)
    return lambda name: exact.get(name) or by_stem.get(Path(name).stem)


def duplicate_videos(annotations: list[Annotation]) -> dict[str, int]:
    """Video names with more than one annotation row, and how many rows each has."""
    counts: dict[str, int] = {}
    for a in annotations:
        counts[a.video] = counts.get(a.video, 0) + 1
    return {name: n for name, n in counts.items() if n > 1}


def class_list(annotations: list[Annotation]) -> tuple[str, ...]:
    """vau.tasks.ANOMALY_CLASSES plus any class of the file it does not spell (so per-class covers every row)."""
    extra = sorted({a.anomaly_class for a in annotations
                    if a.anomaly_class and canonical_class(a.anomaly_class, ANOMALY_CLASSES) is None})
    return (*ANOMALY_CLASSES, *dict.fromkeys(extra))


def scored_rows(annotations: list[Annotation], predictions: list[Prediction], task: str) -> tuple[list, int]:
    """The rows ``task`` scores, and how many were left out: every row with the task's ground truth, as the task
    counts them given the videos it has predictions for (``Task.rows_to_score``; TAG leaves out normal clips when
    none of them was asked about, as a VAU-R1-protocol test never asks)."""
    spec = get_task(task)
    find = _lookup(annotations)
    predicted = {find(p.video).video for p in predictions if p.task == task and find(p.video) is not None}
    return spec.rows_to_score([a for a in annotations if spec.has_truth(a)], predicted)


def score(annotations: list[Annotation], predictions: list[Prediction], tasks: list[str]) -> dict:
    """The evaluation report of ``tasks`` (:func:`vau.eval.report.evaluate` over the annotation rows) plus coverage.

    ``tasks[t]["metrics"]`` holds percent values keyed by metric name (what ``output=`` has always written);
    ``overall`` / ``by_source`` hold fractions (contract of ``score.json``).
    """
    find = _lookup(annotations)
    samples, left_out = [], {}
    for task in tasks:
        spec = get_task(task)
        rows, left_out[task] = scored_rows(annotations, predictions, task)
        samples += [spec.sample(a) for a in rows]
    try:
        report = evaluate(samples, [p.record for p in predictions], tasks, class_list(annotations))
    except ReportError as err:
        raise ScoreError(str(err)) from None
    unknown = sorted({video for video, _ in report["unmatched"] if find(video) is None})
    for task, entry in report["tasks"].items():
        entry["no_ground_truth"] = sorted({v for v, t in report["unmatched"] if t == task and find(v) is not None})
        entry["normal_clips_not_asked"] = left_out[task]
    report["unknown_videos"] = unknown
    del report["unmatched"]
    report["looks"] = look_summary(predictions)
    return report


def look_summary(predictions: list[Prediction]) -> dict | None:
    """How look-again replies looked (``generation.look_again``): replies, the share shown a window, the requests
    refused by reason and the looked-at frames per reply; None when no record carries ``looks``."""
    looks = [p.record.get("looks") for p in predictions if isinstance(p.record.get("looks"), list)]
    if not looks:
        return None
    requests = [r for row in looks for r in row if isinstance(r, dict)]
    refused = Counter(str(r.get("reason")) for r in requests if not r.get("window"))
    frames = sum(len(r["frame_times"]) for r in requests if r.get("window") and isinstance(r.get("frame_times"), list))
    return {"replies": len(looks), "looked": sum(any(isinstance(r, dict) and r.get("window") for r in row)
                                                 for row in looks) / len(looks),
            "refused": dict(sorted(refused.items())), "looked_frames_per_reply": frames / len(looks)}


def _names(names: list[str]) -> str:
    return ", ".join(names[:SHOW]) + (f", ... ({len(names) - SHOW} more)" if len(names) > SHOW else "")


def coverage_lines(report: dict) -> list[str]:
    """Which rows had no prediction, which predictions were not scored, and repeats."""
    lines = ["Coverage:"]
    for task, entry in report["tasks"].items():
        missing = entry["missing"]
        lines.append(f"  {task}: {entry['rows'] - len(missing)}/{entry['rows']} annotation rows predicted"
                     + (f"; {len(missing)} without a prediction, counted wrong: {_names(missing)}" if missing else ""))
        if entry.get("normal_clips_not_asked"):
            lines.append(f"  {task}: no prediction on any of the {entry['normal_clips_not_asked']} normal clips: "
                         f"they are left out and the false-alarm rate is not measured")
        if entry.get("no_ground_truth"):
            lines.append(f"  {task}: {len(entry['no_ground_truth'])} predictions for rows without {task} ground "
                         f"truth, not scored: {_names(entry['no_ground_truth'])}")
    if report["unknown_videos"]:
        lines.append(f"  {len(report['unknown_videos'])} predicted videos are not in the annotations, ignored: "
                     f"{_names(report['unknown_videos'])}")
    if report["duplicates"]:
        lines.append(f"  {report['duplicates']} repeated predictions ({report['conflicting_duplicates']} with a "
                     f"different reply); the first of each counts")
    return lines


def format_report(report: dict, title: str) -> str:
    """The paper's layout (Markdown tables: rows = sources, columns = metrics, with n), then the coverage (and the
    looks of look-again replies)."""
    looks = report.get("looks")
    look_lines = [] if not looks else [
        "", f"Looks: {looks['replies']} replies, {100 * looks['looked']:.1f}% shown a window, "
            f"{looks['looked_frames_per_reply']:.1f} looked-at frames per reply"
            + (", refused: " + ", ".join(f"{k} {v}" for k, v in looks["refused"].items()) if looks["refused"] else "")]
    return "\n".join([title, "", report_tables(report), "", *coverage_lines(report), *look_lines])


def write_report(report: dict, text: str, folder: Path) -> dict:
    """``folder``/score.json, score.md (``text``) and the PNG plots; returns the report with its ``plots``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        report = {**report, "plots": write_plots(report, folder)}
        (folder / "score.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
        (folder / "score.md").write_text(text + "\n")
    except OSError as err:
        raise ScoreError(f"report={folder}: cannot write the report: {err}") from None
    return report


def check_outputs(args: dict, files: list[Path]) -> None:
    """``output=`` and the files of ``report=DIR`` never land on an input, a folder or a file score did not write
    (vau.outputs); checked before scoring."""
    inputs = {"annotations": args["annotations"], **{f"predictions ({f.name})": f for f in files}}
    overwrite = flag(args.get("overwrite", "false"), "overwrite", ScoreError)
    if args.get("output"):
        check_output("output", args["output"], inputs, overwrite=overwrite, ours=json_with_key("tasks"), error=ScoreError)
    if args.get("report"):
        folder = Path(args["report"])
        if folder.exists() and not folder.is_dir():
            raise ScoreError(f"report={folder} is a file; give a folder (score writes score.json, score.md, "
                             f"report.html and plots into it)")
        for name, ours in (("score.json", json_with_key("tasks")), ("score.md", text_contains("VAU-Bench scores")),
                           ("report.html", text_contains(HTML_MARKER))):
            check_output("report", folder / name, inputs, overwrite=overwrite, ours=ours, error=ScoreError,
                         label=f"{folder / name} (in report={folder})")


def write_metrics(report: dict, out: Path) -> None:
    """``output=FILE``: the report as strict JSON (NaN written as null)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    except OSError as err:
        raise ScoreError(f"output={out}: cannot write the metrics file: {err}") from None
    print(f"metrics written to {out}")


def rows_at_level(annotations: list[Annotation], level: str, path: str) -> list[Annotation]:
    """The rows of one granularity (``extra["level"]`` of the caption formats: HIVAU ``video`` / ``event`` /
    ``clip``, UCA ``sentence``). Predictions are matched to rows by video, so a file with several texts per video
    is scored at a level with one text per video (HIVAU: ``level=video``)."""
    levels = sorted({str(a.extra.get(LEVEL)) for a in annotations if a.extra.get(LEVEL)})
    kept = [a for a in annotations if a.extra.get(LEVEL) == level]
    if not kept:
        found = ", ".join(levels) if levels else "none (level= applies to data.format=hivau / uca files)"
        raise ScoreError(f"level={level}: no row of {path} is at that level; its levels: {found}")
    return kept


def _frame_level(args: dict, annotations: list[Annotation]) -> int:
    """``frame_scores=FILE``: frame-level AUC / AP / false alarms (vau.eval.frame_score) instead of the VAU-Bench
    tables."""
    page = None
    if args.get("report"):
        folder = Path(args["report"])
        if folder.exists() and not folder.is_dir():
            raise ScoreError(f"report={folder} is a file; give a folder (score writes frame_report.html into it)")
        page = check_output("report", folder / "frame_report.html",
                            {"annotations": args["annotations"], "frame_scores": args["frame_scores"]},
                            overwrite=flag(args.get("overwrite", "false"), "overwrite", ScoreError),
                            ours=text_contains("<title>Frame-level anomaly scores</title>"), error=ScoreError,
                            label=f"{folder / 'frame_report.html'} (in report={folder})")
    try:
        scores = read_frame_scores(args["frame_scores"])
        report = frame_report(annotations, scores)
    except FrameScoreError as err:
        raise ScoreError(str(err)) from None
    title = (f"Frame-level anomaly detection of {Path(args['frame_scores']).name} against "
             f"{Path(args['annotations']).name} ({len(annotations)} videos)")
    table = format_frame_report(report, title)
    print(table)
    if page is not None:
        write_frame_page(report, table, annotations, scores, page)
        print(f"score curves written to {page}")
    if args.get("output"):
        out = Path(args["output"])
        check_output("output", out, {"annotations": args["annotations"], "frame_scores": args["frame_scores"]},
                     overwrite=flag(args.get("overwrite", "false"), "overwrite", ScoreError),
                     ours=json_with_key("sources"), error=ScoreError)
        write_metrics(report, out)
    return 0


def main(argv: list[str]) -> int:
    """Run the score stage; returns the process exit code (2 for bad arguments or input)."""
    try:
        args = parse_args(list(argv))
        if args.get("plugins"):  # a plugin's task or annotation format (installed plugins are loaded by the CLI)
            load_plugins([m for m in args["plugins"].split(",") if m], use_entry_points=False)
        if not Path(args["annotations"]).is_file():
            raise ScoreError(f"annotation file {args['annotations']} does not exist; pass annotations=PATH to a "
                             f"VAU-Bench CSV (e.g. test_msad.csv)")
        annotations = read_rows(args["annotations"], args.get("format"))
        if not annotations:
            raise ScoreError(f"annotation file {args['annotations']} has no rows")
        if args.get("frame_scores"):
            return _frame_level(args, annotations)
        if args.get("level"):
            annotations = rows_at_level(annotations, args["level"], args["annotations"])
        duplicates = duplicate_videos(annotations)
        if duplicates:
            names = ", ".join(f"{k} ({n} rows)" for k, n in list(duplicates.items())[:SHOW])
            print(f"warning: {args['annotations']}: {len(duplicates)} video name(s) on more than one row; the first row "
                  f"of each is scored: {names}{' ...' if len(duplicates) > SHOW else ''}", file=sys.stderr)
        files = prediction_files(args["predictions"])
        check_outputs(args, files)
        predictions = [p for path in files for p in read_predictions(path)]
        tasks = [t.strip() for t in args.get("task", "").split(",") if t.strip()]
        predicted_tasks = {p.task for p in predictions}
        tasks = tasks or [t for t in scored_tasks() if t in predicted_tasks]
        report = score(annotations, predictions, tasks)
        report.update(annotations=str(args["annotations"]), predictions=[str(f) for f in files])
        title = (f"VAU-Bench scores (percent) of {', '.join(f.name for f in files)} against "
                 f"{Path(args['annotations']).name} ({len(annotations)} rows)")
        text = format_report(report, title)
        print(text)
        if args.get("report"):
            folder = Path(args["report"])
            report = write_report(report, text, folder)

            page = write_html_report(report, folder / "report.html")
            print(f"report written to {folder}: score.json, score.md, {page.name}, "
                  f"{', '.join(report['plots'].values()) or 'no plots'}")
        if args.get("output"):
            write_metrics(report, Path(args["output"]))
        return 0
    except (ScoreError, AnnotationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
