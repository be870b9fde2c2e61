"""``python -m vau judge``: score free-text replies with a judge model on VAU-Eval's five dimensions.

VAU-R1 scores descriptions and reasoning with an LLM judge (VAU-Eval) on five dimensions, each 0-10 (total 0-50):
classification correctness, key object and action matching, fluency and coherence, informativeness and domain
awareness, factual consistency. Here the judge is any chat model of :mod:`vau.chat` (a local checkpoint or an
OpenAI-compatible server), greedy, asked for one JSON object; its reply is read without ``eval``: the first JSON
object in the text, else ``dimension: N`` lines (see :func:`parse_scores` for when lines count). A reply that gives
no score for every dimension, or any score outside 0..10 (another scale: not clamped), is a *fallback*: counted
and reported, left out of the means. Replies are cached (``judge.cache``) so an interrupted run resumes. The
command exits 1 when not one request got a reply (the outputs are still written).

Which text is judged: the whole reply (tags stripped) of a free-text task (``describe``), and the ``<think>``
reasoning of any other reply (qa, cls, tag and their reflect variants); a reply with neither is skipped. The
reference is the annotation row's Description and Reasoning (with its class and key object).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import Counter
from pathlib import Path

from vau.chat import backend_from_options, first_json_object, prefixed, runner_from_options
from vau.config import ConfigError, key_values
from vau.data.annotations import Annotation, AnnotationError
from vau.data.readers import read_rows
from vau.eval.score import ScoreError, prediction_files
from vau.registry import RegistryError
from vau.tasks import Task, get_task

log = logging.getLogger(__name__)

PROMPT_VERSION = "judge-v1"
DIMENSIONS = ("classification", "key_object_action", "fluency", "informativeness", "factual_consistency")
TITLES = {"classification": "Classification correctness", "key_object_action": "Key object and action matching",
          "fluency": "Fluency and coherence", "informativeness": "Informativeness and domain awareness",
          "factual_consistency": "Factual consistency"}
# how a key or a line names each dimension (normalised words, lower case)
_NAMES = {"classification": re.compile(r"classif|category|anomaly.?type"),
          "key_object_action": re.compile(r"key.?object|object.?and.?action|action.?match"),
          "fluency": re.compile(r"fluen|coheren"), "informativeness": re.compile(r"informat|domain"),
          "factual_consistency": re.compile(r"factual|consisten|hallucin")}
# a score line: "Fluency: 9", "- **Key object**: 6/10", "2. Factual consistency = 7", at the start of a line or
# after , ; | (a one-line list); a name inside a sentence is not a score line
_LINE_SCORE = re.compile(r"(?:^|[,;|])[ \t>*#\-\d.)]*[\"'*]*([A-Za-z][A-Za-z_ &/\-]{2,60}?)[\"'*]*\s*[:=\-]\s*[\"'*]*\s*"
                         r"(-?\d+(?:\.\d+)?)", re.MULTILINE)
# a judge declining the task; its text may still quote the score template ("classification: 10", ...)
_REFUSAL = re.compile(r"\b(?:sorry|apologi[sz]e|as an ai)\b|\bI(?:'m| am)? (?:unable|not able)\b"
                      r"|\bI (?:cannot|can't|can ?not|won't|will not|must decline|decline|refuse)\b", re.IGNORECASE)
SYSTEM = (
    "You are a strict, impartial judge of video anomaly understanding. You compare a model's description or "
    "reasoning about a video with the reference annotation and score it on five dimensions, each an integer from "
    "0 (worst) to 10 (best):\n"
    "- classification: does it identify the right anomaly type (or correctly call the video normal)?\n"
    "- key_object_action: does it name the key objects and actions of the reference?\n"
    "- fluency: is it fluent, coherent and well organised?\n"
    "- informativeness: is it informative, specific and aware of the surveillance / anomaly domain?\n"
    "- factual_consistency: does it avoid claims that contradict the reference or are not supported by it?\n"
    'Reply with one JSON object and nothing else: {"classification": N, "key_object_action": N, "fluency": N, '
    '"informativeness": N, "factual_consistency": N}'
)
USAGE = ("usage: python -m vau judge predictions=FILE[,FILE...] annotations=FILE [out=DIR] [tasks=describe,qa,...] "
         "(judge.path=DIR | judge.base_url=URL judge.model=NAME [judge.api_key_env=OPENAI_API_KEY]) "
         "[judge.concurrency=4] [judge.retries=3] [judge.timeout=120] [judge.cache=FILE|none] "
         "[judge.max_new_tokens=256] [format=vau_bench]")


def _task(name: str) -> Task:
    """The record's task; for a name no loaded module registered, the base Task (its ``<think>`` text is judged)."""
    try:
        return get_task(name)
    except RegistryError:
        return Task(name)


def judged_text(task: str, response: str) -> str:
    """The text a judge scores, as the task says (``Task.judged_text``): ``<think>`` reasoning when the reply has
    some, else (free-text tasks) the reply without tags; "" when there is nothing to judge."""
    return _task(task).judged_text(response)


def _number(value) -> float | None:
    """The number a JSON value gives (a string's first number: "9/10" is 9), unchanged; None when none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = re.search(r"-?\d+(?:\.\d+)?", value)
        value = float(match.group(0)) if match else None
    if not isinstance(value, (int, float)) or value != value:  # NaN
        return None
    return float(value)


def _in_range(score: float) -> bool:
    return 0.0 <= score <= 10.0


def _dimension(name: str) -> str | None:
    key = re.sub(r"[^a-z]+", "_", name.lower())
    return next((d for d, pattern in _NAMES.items() if pattern.search(key)), None)


def parse_scores(text: str) -> tuple[dict[str, float] | None, str]:
    """The five scores of a judge reply and how they were read (``json`` / ``text``), or ``(None, "fallback")``.

    Rules (docs/judge.md):

    - any score outside 0..10, in the JSON object or a line, makes the whole reply unreadable: a judge on another
      scale (0-100, or negative) has no score that means x/10, so none is clamped or kept;
    - the first JSON object gives the scores it names; when it names all five, that is the answer;
    - otherwise ``dimension: N`` lines add the rest, but only when the reply holds no refusal wording ("I'm
      sorry", "I cannot", ...) and each missing dimension has exactly one score line; a refusal that quotes the
      template with 10s, or a reply scoring a dimension twice, is not an answer.
    """
    data = first_json_object(text)
    found: dict[str, float] = {}
    if data is not None:
        flat = dict(data)
        for value in data.values():  # {"scores": {...}} nests them one level down
            if isinstance(value, dict):
                flat.update(value)
        for key, value in flat.items():
            dim, score = _dimension(str(key)), _number(value)
            if dim is None or score is None:
                continue
            if not _in_range(score):
                return None, "fallback"
            found.setdefault(dim, score)
        if len(found) == len(DIMENSIONS):
            return found, "json"
    text = text if isinstance(text, str) else ""
    if _REFUSAL.search(text):
        return None, "fallback"
    lines: dict[str, list[float]] = {}
    for name, number in _LINE_SCORE.findall(text):  # JSON scores found so far stand; lines add the rest
        dim = _dimension(name)
        if dim is not None and dim not in found:
            lines.setdefault(dim, []).append(float(number))
    for dim, values in lines.items():
        if len(values) != 1 or not _in_range(values[0]):
            return None, "fallback"
        found[dim] = values[0]
    if len(found) == len(DIMENSIONS):
        return found, "text"
    return None, "fallback"


def messages(reference: Annotation, task: str, text: str) -> list[dict[str, str]]:
    lines = [f"Anomaly class: {reference.anomaly_class or 'unknown'}"]
    if reference.key_object:
        lines.append(f"Key object: {' '.join(reference.key_object.split())}")
    lines += [f"Description: {' '.join(reference.description.split()) or '(none)'}",
              f"Reasoning: {reference.reasoning.strip() or '(none)'}"]
    what = _task(task).judged_as
    user = "\n".join(["Reference annotation:", *lines, "", f"Model's {what} to score:", text, "",
                      "Score it on the five dimensions; reply with the JSON object only."])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


class JudgeError(ValueError):
    """Bad arguments or input; the message names the file/line/key."""


def read_records(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise JudgeError(f"predictions file {path} cannot be read: {err}") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise JudgeError(f"{path}, line {number}: not valid JSON ({err.msg}); each line must be one object "
                                 f'like {{"video": "a.mp4", "task": "describe", "response": "..."}}') from None
            except RecursionError:
                raise JudgeError(f"{path}, line {number}: JSON nested too deeply to read; each line must be one "
                                 f"flat object") from None
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in
                                                       ("video", "task", "response")):
                raise JudgeError(f"{path}, line {number}: needs string keys video, task and response")
            records.append(record)
    if not records:
        raise JudgeError(f"no predictions in {', '.join(map(str, paths))}")
    return records


def _finder(annotations: list[Annotation]):
    by_row = {(a.video, a.row): a for a in annotations}
    exact = {a.video: a for a in annotations}
    by_stem = {Path(a.video).stem: a for a in annotations}
    return lambda video, row: (by_row.get((video, row)) or exact.get(video) or by_stem.get(Path(video).stem))


def _means(rows: list[dict]) -> dict:
    scored = [r for r in rows if r["scores"] is not None]
    means = {d: (round(sum(r["scores"][d] for r in scored) / len(scored), 3) if scored else None)
             for d in DIMENSIONS}
    total = round(sum(r["total"] for r in scored) / len(scored), 3) if scored else None
    return {"n": len(scored), "means": means, "total_mean": total}


def judge(records: list[dict], annotations: list[Annotation], runner, tasks: set[str] | None = None,
          on_reply=None) -> tuple[list[dict], dict]:
    """Judge every record with text to judge; returns (per-row results, report)."""
    find = _finder(annotations)
    skipped: Counter = Counter()
    todo: list[tuple[dict, Annotation, str]] = []
    for record in records:
        if tasks is not None and record["task"] not in tasks:
            skipped["task_not_selected"] += 1
            continue
        if record.get("shift") not in (None, 0):  # the reasoning of one reply per QA row: the original order
            skipped["qa_shift_not_0"] += 1
            continue
        text = judged_text(record["task"], record["response"])
        ann = find(record["video"].strip(), record.get("row"))
        if not text:
            skipped["nothing_to_judge"] += 1
        elif ann is None:
            skipped["no_annotation_row"] += 1
        elif not (ann.description.strip() or ann.reasoning.strip()):
            skipped["no_reference_text"] += 1
        else:
            todo.append((record, ann, text))
    replies = runner.run([messages(ann, rec["task"], text) for rec, ann, text in todo], on_reply=on_reply)
    rows = []
    for (record, ann, text), reply in zip(todo, replies):
        scores, how = parse_scores(reply.text) if reply.text is not None else (None, "error")
        rows.append({"video": record["video"], "task": record["task"], "row": ann.row, "source": ann.source,
                     "status": how, "scores": scores, "total": sum(scores.values()) if scores else None,
                     "judged": text, "judge_reply": reply.text, "error": reply.error})
    status = Counter(r["status"] for r in rows)
    report = {**_means(rows), "asked": len(rows), "fallback": status["fallback"], "errors": status["error"],
              "parsed": {"json": status["json"], "text": status["text"]}, "skipped": dict(skipped),
              "by_task": {t: _means([r for r in rows if r["task"] == t]) for t in sorted({r["task"] for r in rows})}}
    return rows, report


def format_markdown(report: dict) -> str:
    def cell(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    tasks = report["by_task"]
    lines = ["# VAU-Eval style judge scores (0-10 per dimension, total 0-50)", "",
             "| Dimension | all | " + " | ".join(tasks) + " |", "|---|---:|" + "---:|" * len(tasks)]
    for dim in DIMENSIONS:
        lines.append(f"| {TITLES[dim]} | {cell(report['means'][dim])} | "
                     + " | ".join(cell(t["means"][dim]) for t in tasks.values()) + " |")
    lines.append(f"| **Total** | {cell(report['total_mean'])} | "
                 + " | ".join(cell(t["total_mean"]) for t in tasks.values()) + " |")
    lines.append(f"| n | {report['n']} | " + " | ".join(str(t["n"]) for t in tasks.values()) + " |")
    lines += ["", f"Judged {report['asked']} replies: {report['parsed']['json']} read as JSON, "
                  f"{report['parsed']['text']} from `dimension: N` lines, {report['fallback']} fallback (unreadable, "
                  f"left out of the means), {report['errors']} request errors."]
    if report["skipped"]:
        lines.append("Skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(report["skipped"].items())) + ".")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python -m vau judge ...``; exit code 2 for bad arguments or input, 1 when no request got a reply."""
    try:
        args = key_values(argv, known=("predictions", "annotations", "out", "tasks", "format"),
                          prefixes=("judge.",), required=("predictions", "annotations"))
    except ConfigError as err:
        print(f"error: {err}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        try:
            paths = prediction_files(args["predictions"])  # comma lists and globs (predictions_rank*.jsonl)
        except ScoreError as err:
            raise JudgeError(str(err)) from None
        out = Path(args.get("out") or paths[0].parent / "judge")
        options = prefixed(args, "judge")
        options.setdefault("max_new_tokens", 256)
        backend = backend_from_options(options, "judge")
        runner = runner_from_options(backend, options, "judge", out / "judge_cache.jsonl", PROMPT_VERSION, "judge")
        records = read_records(paths)
        annotations = read_rows(args["annotations"], args.get("format"))
        tasks = {t for t in args.get("tasks", "").split(",") if t} or None
        rows, report = judge(records, annotations, runner, tasks)
    except (JudgeError, AnnotationError, ValueError, RegistryError) as err:
        print(f"error: {err}\n{USAGE}", file=sys.stderr)
        return 2
    report = {"predictions": [str(p) for p in paths], "annotations": args["annotations"],
              "judge": backend.identity(), **report}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "judge.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "judge.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    markdown = format_markdown(report)
    (out / "judge.md").write_text(markdown + "\n", encoding="utf-8")
    print(markdown)
    print(f"\nper-row scores: {out / 'judge.jsonl'}; report: {out / 'judge.json'}, {out / 'judge.md'}")
    if rows and report["errors"] == len(rows):  # a dead server or a wrong URL must not look like a finished run
        why = " ".join(str(next(r["error"] for r in rows if r["error"])).split())
        print(f"error: judge: none of the {len(rows)} requests succeeded; the first error: {why}", file=sys.stderr)
        return 1
    return 0
