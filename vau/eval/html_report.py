"""One static, self-contained HTML page for a scored run: ``python -m vau report score=DIR/score.json [out=FILE]``.

The page holds the metric tables of a ``score.json`` (overall and per source, the QA position baselines), its
plots, and a browsable list of the scored clips: thumbnails of the frames the model saw, a timeline of the
predicted and annotated intervals, the reply, its parsed answer and the truth, with filters (wrong only, task,
source, class, video name). Everything is inside the one file (CSS, JS, PNG plots and JPEG thumbnails as data
URIs), so it opens from disk or an e-mail attachment, with no server and no network.

Replies are model output: they reach the page only as JSON data that the page's script puts into text nodes,
never as markup. The JSON is written with ``<``, ``>`` and ``&`` escaped, so no reply can close its script tag.

Example (shell)::

    python -m vau report score=outputs/demo/RUN/score/score.json        # -> outputs/demo/RUN/score/report.html
    python -m vau report score=score.json out=/tmp/r.html thumbs=4
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from vau.config import flag, key_values
from vau.data.annotations import source_name
from vau.eval.thumbnails import Strip, pick_times, video_thumbnails
from vau.outputs import check_output, json_safe, text_contains

log = logging.getLogger(__name__)

THUMBS_PER_CLIP = 8
THUMB_WIDTH = 96
# About 2 KB per thumbnail: the page stays near 15 MB however many clips there are (VAU-Bench test: ~3000
# rows x 3 tasks). Above the budget each video gets fewer thumbnails, never none.
MAX_THUMBNAILS = 8000
REASONS = {"missing": "video file missing", "unreadable": "video unreadable", "no_frames": "video has no frames",
           "no_path": "no video path recorded", "no_times": "no frame times recorded",
           "off": "thumbnails off"}
HTML_MARKER = "<title>vau score report</title>"  # how output checks recognise a page this module wrote
USAGE = ("usage: python -m vau report score=DIR/score.json [out=DIR/report.html] [thumbs=8] [decoder=pyav] "
         "[workers=2]")


class ReportError(ValueError):
    """A score file or argument the report cannot use; the message names it and what to do."""


# ------------------------------------------------------------------------------------------------ values ----
def _number(value):
    """A metric entry as a plain number: ``0.81`` or ``{"value": 0.81, "n": 240}`` -> 0.81; else None."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else value


def _metric_values(score: dict) -> list[float]:
    found = []
    for entry in (score.get("tasks") or {}).values():
        rows = [entry.get("overall") or {}, *(entry.get("by_source") or {}).values()]
        found += [v for row in rows for k, v in row.items() if k != "n" and isinstance(_number(v), float)]
    qa = score.get("qa_position") or {}
    found += [v for v in (qa.get("raw"), qa.get("circular"), *(qa.get("constant") or {}).values())
              if isinstance(_number(v), float)]
    return [_number(v) for v in found]


class _Format:
    """Metric numbers as percent. score.json holds fractions (contract: accuracy 0.81); a file whose metrics
    exceed 1 was written in percent and is shown as it is."""

    def __init__(self, score: dict) -> None:
        self.scale = 1.0 if any(v > 1.0 for v in _metric_values(score)) else 100.0

    def __call__(self, key: str, value) -> str:
        number = _number(value)
        if number is None:
            return "–"
        if key == "n" or isinstance(number, int):
            return str(number)
        return f"{number * self.scale:.2f}"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


# ------------------------------------------------------------------------------------------------ tables ----
def _table(rows: list[tuple[str, dict]], fmt: _Format, first: str) -> str:
    keys = list(dict.fromkeys(k for _, row in rows for k, v in row.items() if k != "n" and _number(v) is not None))
    keys += ["n"] if any("n" in row for _, row in rows) else []
    head = "".join(f"<th>{_e(k)}</th>" for k in [first, *keys])
    body = "".join("<tr><td>" + _e(name) + "</td>" + "".join(f"<td>{fmt(k, row.get(k))}</td>" for k in keys)
                   + "</tr>" for name, row in rows)
    return f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def metric_tables(score: dict, fmt: _Format) -> str:
    """One table per task: an ``overall`` row and one row per source."""
    parts = []
    for task, entry in (score.get("tasks") or {}).items():
        if not isinstance(entry, dict):
            continue
        rows = [("overall", entry.get("overall") or {})]
        rows += [(f"source: {source_name(name)}", row) for name, row in sorted((entry.get("by_source") or {}).items())]
        rows = [(name, row) for name, row in rows if isinstance(row, dict)]
        parts.append(f'<div class="card"><h3>{_e(task)}</h3>' + _table(rows, fmt, "rows") + "</div>")
    qa = score.get("qa_position")
    if isinstance(qa, dict):
        row = {"raw": qa.get("raw"), "circular": qa.get("circular")}
        row.update({f"always {letter}": v for letter, v in (qa.get("constant") or {}).items()})
        row["n"] = qa.get("n")
        shifts = ", ".join(str(s) for s in qa.get("shifts") or [])
        parts.append('<div class="card"><h3>QA: answer position</h3>' + _table([("QA", row)], fmt, "")
                     + f'<p class="note">raw: options in their original order; circular: right under every cyclic '
                       f'shift of the options ({_e(shifts) or "none"}); always X: accuracy of answering X to every '
                       f"question.</p></div>")
    if not parts:
        return '<p class="note">score.json holds no metric tables.</p>'
    return "".join(parts)


MAX_PLOT_BYTES = 8 * 2**20  # a plot score writes is ~50 KB


def read_plot(plot_dir: Path, rel: str) -> tuple[bytes | None, str]:
    """The bytes of plot ``rel``, or None and why not. A score.json is untrusted input (it may come from elsewhere): a
    plot must be a regular PNG/SVG file inside ``plot_dir`` (no absolute path, no ``..`` out of it, no FIFO or
    device), at most :data:`MAX_PLOT_BYTES`, so the page never embeds a local file or hangs on one."""
    import os
    import stat

    root = Path(os.path.realpath(plot_dir))
    path = Path(os.path.realpath(plot_dir / str(rel)))
    if not path.is_relative_to(root) or path.suffix.lower() not in (".png", ".svg"):
        return None, "outside the report folder or not a .png/.svg file: not embedded"
    try:
        info = path.stat()
    except OSError:
        return None, "not found next to the report"
    if not stat.S_ISREG(info.st_mode):
        return None, "not a regular file: not embedded"
    if info.st_size > MAX_PLOT_BYTES:
        return None, f"larger than {MAX_PLOT_BYTES // 2**20} MB: not embedded"
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_PLOT_BYTES + 1)[:MAX_PLOT_BYTES], ""
    except OSError as err:
        return None, f"unreadable ({err.strerror or err})"


def plot_figures(score: dict, plot_dir: Path) -> str:
    """The PNGs named in ``score["plots"]`` as data URIs (:func:`read_plot`); a plot that is not embedded becomes a
    note."""
    figures = []
    for name, rel in (score.get("plots") or {}).items():
        data, why = read_plot(plot_dir, str(rel))
        if data is None:
            log.warning("report: plot %s (%s) %s; the page notes it", name, rel, why)
            figures.append(f'<figure class="missing"><p class="note">plot {_e(name)}: {_e(rel)} {_e(why)}'
                           f"</p><figcaption>{_e(name)}</figcaption></figure>")
            continue
        kind = "svg+xml" if str(rel).lower().endswith(".svg") else "png"
        encoded = base64.b64encode(data).decode("ascii")
        figures.append(f'<figure><img alt="{_e(name)}" src="data:image/{kind};base64,{encoded}">'
                       f"<figcaption>{_e(name)}</figcaption></figure>")
    return "".join(figures)


# ------------------------------------------------------------------------------------------------- clips ----
def _interval(value) -> list[float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) is not None for v in value):
        return [float(value[0]), float(value[1])]
    return None


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _text(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _check_clips(clips) -> list[dict]:
    if clips is None:
        return []
    if not isinstance(clips, list):
        raise ReportError(f"score['clips'] must be a list of clip objects, got {type(clips).__name__}")
    for i, clip in enumerate(clips):
        if not isinstance(clip, dict) or not isinstance(clip.get("video"), str):
            raise ReportError(f"score['clips'][{i}] must be an object with a 'video' name (see contract (2) in "
                              f"docs/report.md); got {str(clip)[:120]}")
    return clips


def clip_thumbnails(clips: list[dict], per_clip: int, width: int, decoder: str, workers: int) -> tuple[list, dict]:
    """Decode every distinct (video, times) once. Returns one key per clip (None: no thumbnails) and
    ``{key: Strip}``."""
    videos = max(1, len({clip.get("video_path") for clip in clips if clip.get("video_path")}))
    if per_clip * videos > MAX_THUMBNAILS:
        reduced = max(1, MAX_THUMBNAILS // videos)
        log.info("report: %d videos; %d thumbnails per clip instead of %d keep the page small", videos, reduced,
                 per_clip)
        per_clip = reduced
    keys, jobs = [], {}
    for clip in clips:
        times = tuple(pick_times(clip.get("frame_times") or [], per_clip)) if per_clip > 0 else ()
        path = clip.get("video_path") or None
        key = (path, times)
        keys.append(key)
        if key not in jobs:
            jobs[key] = None
    todo = [k for k in jobs if k[1] and k[0]]
    if todo:
        log.info("report: decoding thumbnails of %d videos", len(todo))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for key, strip in zip(todo, pool.map(lambda k: video_thumbnails(k[0], k[1], width, decoder=decoder), todo)):
            jobs[key] = strip
    for (path, times), strip in jobs.items():
        if strip is None:
            jobs[path, times] = Strip(reason="off" if per_clip == 0 else "no_path" if not path else "no_times")
    return keys, jobs


def clip_records(clips: list[dict], keys: list, strips: dict) -> tuple[list[dict], dict]:
    """The clip list as the page's script reads it, and ``{thumbnail id: [base64 JPEG, ...]}``."""
    ids = {key: f"t{i}" for i, key in enumerate(k for k, s in strips.items() if s.jpegs)}
    thumbs = {ids[k]: [base64.b64encode(j).decode("ascii") for j in strips[k].jpegs] for k in ids}
    records = []
    for clip, key in zip(clips, keys):
        strip = strips[key]
        pred, true = _interval(clip.get("pred_interval")), _interval(clip.get("true_interval"))
        duration = _number(clip.get("duration")) or strip.duration
        if not duration:  # no length known: the timeline spans what the clip itself names
            ends = [x for iv in (pred, true) if iv for x in iv] + [float(t) for t in clip.get("frame_times") or []]
            duration = max(ends) if ends and max(ends) > 0 else None
        records.append({
            "video": clip["video"], "task": _text(clip.get("task")), "source": _text(clip.get("source")),
            "cls": _text(clip.get("anomaly_class")), "response": _text(clip.get("response")),
            "prediction": _text(clip.get("prediction")), "truth": _text(clip.get("truth")),
            "score": _number(clip.get("score")), "correct": bool(clip.get("correct")),
            "pred": pred, "true": true, "duration": duration,
            "times": [float(t) for t in clip.get("frame_times") or []], "thumb_times": list(strip.times),
            "looks": [iv for iv in map(_interval, _list(clip.get("looks"))) if iv],
            "look_times": [float(t) for t in _list(clip.get("look_times")) if _number(t) is not None],
            "initial": _text(clip.get("initial")) if "initial" in clip else None,
            "thumbs": ids.get(key), "why": None if strip.jpegs else REASONS.get(strip.reason or "off"),
        })
    return records, thumbs


def _script_json(data) -> str:
    """JSON that is safe inside a <script> element: no reply can write ``</script>`` or ``<!--``, and no NaN (which
    JSON.parse rejects: the page would show no clips)."""
    text = json.dumps(json_safe(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return resources.files("vau").joinpath("report_assets", name).read_text(encoding="utf-8")


# -------------------------------------------------------------------------------------------------- page ----
def write_html_report(score: dict, out_path, *, plot_dir=None, thumbs: int = THUMBS_PER_CLIP,
                      thumb_width: int = THUMB_WIDTH, decoder: str = "pyav", workers: int | None = None) -> Path:
    """Render a score.json-shaped dict into one self-contained HTML file.

    Args:
        score: the scorer's report (contract (2): ``tasks``, ``qa_position``, ``plots``, ``clips``, ...).
        out_path: the HTML file to write (its folder is created).
        plot_dir: the folder ``score["plots"]`` paths are relative to; default: ``out_path``'s folder.
        thumbs: thumbnails per clip at most (0: none); fewer when a run has very many videos.
        thumb_width: thumbnail width in pixels.
        decoder: video decoder for the thumbnails, ``pyav`` or ``decord``.
        workers: videos decoded at once (default: up to 4, one per core).

    Returns:
        The path of the written file.

    Raises:
        ReportError: ``score`` is not a dict or its ``clips`` are malformed.
    """
    if not isinstance(score, dict):
        raise ReportError(f"the score must be a dict shaped like score.json, got {type(score).__name__}")
    out_path = Path(out_path)
    plot_dir = Path(plot_dir) if plot_dir is not None else out_path.parent
    clips = _check_clips(score.get("clips"))
    workers = workers or min(4, os.cpu_count() or 1)
    keys, strips = clip_thumbnails(clips, thumbs, thumb_width, decoder, workers)
    records, thumb_data = clip_records(clips, keys, strips)
    fmt = _Format(score)
    no_video = Counter(r["why"] for r in records if r["why"] and r["why"] != REASONS["off"])
    wrong = sum(not r["correct"] for r in records)
    facts = [f"{len(records)} clips, {len(records) - wrong} right, {wrong} wrong"]
    if no_video:
        facts.append(f"{sum(no_video.values())} without thumbnails ("
                     + ", ".join(f"{n}: {why}" for why, n in sorted(no_video.items())) + ")")
    inputs = [("annotations", score.get("annotations")), ("predictions", ", ".join(map(str, score.get("predictions")
                                                                                      or [])))]
    info = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in inputs if v)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{HTML_MARKER}
<style>{_asset("report.css")}</style>
</head><body>
<header><h1>vau score report</h1><dl>{info}</dl>
<p id="summary" class="summary">{_e("; ".join(facts))}</p></header>
<section id="metrics"><h2>Metrics <span class="unit">(percent; n = rows in the denominator)</span></h2>
<div class="cards">{metric_tables(score, fmt)}{plot_figures(score, plot_dir)}</div></section>
<section id="clips"><h2>Clips</h2>
<div class="filters">
<label><input type="checkbox" id="f-wrong"> wrong only</label>
<label>task <select id="f-task"><option value="">all</option></select></label>
<label>source <select id="f-source"><option value="">all</option></select></label>
<label>class <select id="f-class"><option value="">all</option></select></label>
<label>video <input type="search" id="f-text" placeholder="name contains"></label>
<span id="count" class="count"></span>
</div>
<div class="legend"><span class="sw pred"></span> predicted interval <span class="sw true"></span> annotated
interval <span class="sw tick"></span> sampled frame</div>
<div id="list"></div>
<nav class="pager"><button id="prev" type="button">&larr; previous</button> <span id="page"></span>
<button id="next" type="button">next &rarr;</button></nav>
<noscript><p class="note">The clip list needs JavaScript.</p></noscript>
</section>
<script type="application/json" id="clip-data">{_script_json(records)}</script>
<script type="application/json" id="thumb-data">{_script_json(thumb_data)}</script>
<script>{_asset("report.js")}</script>
</body></html>
"""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    log.info("report: %s (%d clips, %.1f MB)", out_path, len(records), out_path.stat().st_size / 1e6)
    return out_path


# --------------------------------------------------------------------------------------------------- CLI ----
def _int_arg(args: dict, key: str, default: int) -> int:
    try:
        value = int(args.get(key, default))
    except ValueError:
        raise ReportError(f"{key}={args[key]!r} is not a whole number\n{USAGE}") from None
    if value < 0:
        raise ReportError(f"{key}={value} must be 0 or more\n{USAGE}")
    return value


def main(argv: list[str]) -> int:
    """Re-render a report from a score.json; returns the process exit code (2 for bad arguments or input)."""
    try:
        args = key_values(argv, known=("score", "out", "thumbs", "decoder", "workers", "overwrite"),
                          error=ReportError, usage=USAGE)
        if not args.get("score"):
            raise ReportError(f"missing score=FILE (the score.json that `python -m vau score` wrote)\n{USAGE}")
        source = Path(args["score"])
        if source.is_dir():
            source = source / "score.json"
        try:
            score = json.loads(source.read_text(encoding="utf-8"))
        except OSError as err:
            raise ReportError(f"score={args['score']}: cannot read {source}: {err.strerror or err}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ReportError(f"{source} is not a JSON score file ({err}); pass the score.json that "
                              f"`python -m vau score` wrote") from None
        decoder = args.get("decoder", "pyav")
        if decoder not in ("pyav", "decord"):
            raise ReportError(f"decoder={decoder!r}: choose pyav or decord")
        out = Path(args.get("out") or source.parent / "report.html")

        check_output("out", out, {"score": source}, ours=text_contains(HTML_MARKER), error=ReportError,
                     overwrite=flag(args.get("overwrite", "false"), "overwrite", ReportError))
        written = write_html_report(score, out, plot_dir=source.parent, thumbs=_int_arg(args, "thumbs",
                                    THUMBS_PER_CLIP), decoder=decoder, workers=_int_arg(args, "workers", 0) or None)
        print(f"report written to {written}")
        return 0
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
