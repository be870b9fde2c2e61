"""One self-contained HTML page of frame-level scores: ``python -m vau score frame_scores=FILE ... report=DIR`` writes
``DIR/frame_report.html`` with the metric table and, for every scored video, its score curve over the frames with
the annotated events shaded, worst videos first (normal videos by their highest score, anomalous ones by the gap
between their scores inside and outside the events), so what a model misses is at the top.

Everything is inline SVG and escaped text: no script, no network, nothing from a video name reaches the page as
markup.
"""

from __future__ import annotations

import html
from pathlib import Path

from vau.data.annotations import Annotation
from vau.data.frame_annotations import FRAME_EVENTS

WIDTH, HEIGHT = 640, 90
MAX_POINTS = 600  # a curve of more frames is drawn from this many evenly spaced points (min and max kept per bin)


def curve_points(scores: list[float], width: int = WIDTH, height: int = HEIGHT) -> str:
    """SVG polyline points of ``scores`` (0..1 upwards) over ``width``; long curves keep each bin's min and max, so a
    one-frame spike still shows."""
    n = len(scores)
    if n == 0:
        return ""
    bins = min(n, MAX_POINTS)
    points = []
    for b in range(bins):
        lo, hi = b * n // bins, max(b * n // bins + 1, (b + 1) * n // bins)
        chunk = scores[lo:hi]
        x = (lo + hi) / 2 / n * width
        for value in ((min(chunk), max(chunk)) if len(chunk) > 1 else chunk):
            y = height - max(0.0, min(1.0, float(value))) * height
            points.append(f"{x:.1f},{y:.1f}")
    return " ".join(points)


def _rank(ann: Annotation, scores: list[float]) -> float:
    """How badly the scores of one video read: high first."""
    events = ann.extra.get(FRAME_EVENTS, ())
    if not events:
        return max(scores)  # a normal video: its highest score is its worst false alarm
    inside = [False] * len(scores)
    for start, end in events:
        for i in range(start, min(end + 1, len(scores))):
            inside[i] = True
    pos = [s for s, a in zip(scores, inside) if a] or [0.0]
    neg = [s for s, a in zip(scores, inside) if not a] or [0.0]
    return sum(neg) / len(neg) - sum(pos) / len(pos) + 1.0  # little separation ranks high


def video_svg(ann: Annotation, scores: list[float]) -> str:
    n = max(1, len(scores))
    rects = "".join(f'<rect x="{start / n * WIDTH:.1f}" y="0" width="{max(1.0, (end + 1 - start) / n * WIDTH):.1f}" '
                    f'height="{HEIGHT}" class="event"/>' for start, end in ann.extra.get(FRAME_EVENTS, ()))
    return (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img">'
            f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" class="frame"/>{rects}'
            f'<line x1="0" y1="{HEIGHT / 2}" x2="{WIDTH}" y2="{HEIGHT / 2}" class="half"/>'
            f'<polyline points="{curve_points(scores)}" class="curve"/></svg>')


def write_frame_page(report: dict, table: str, annotations: list[Annotation], scores: dict[str, list[float]],
                     out: Path) -> Path:
    """The page: the metric table (as printed) and one curve per scored video."""
    scored = [a for a in annotations if a.video in scores]
    scored.sort(key=lambda a: -_rank(a, scores[a.video]))
    items = []
    for ann in scored:
        values = scores[ann.video]
        kind = "normal" if not ann.extra.get(FRAME_EVENTS) else f"{len(ann.extra[FRAME_EVENTS])} event(s)"
        items.append(f'<section class="video"><h3>{html.escape(ann.video)} <small>{html.escape(ann.anomaly_class)}, '
                     f'{kind}, {len(values)} frames, max score {max(values):.3f}</small></h3>'
                     f'{video_svg(ann, values)}</section>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Frame-level anomaly scores</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; }}
.video h3 {{ font-size: 0.95em; margin: 1em 0 0.2em; }} small {{ color: #666; font-weight: normal; }}
.frame {{ fill: #fafafa; stroke: #ccc; }} .event {{ fill: #f4c7c3; }} .half {{ stroke: #bbb; stroke-dasharray: 4 3; }}
.curve {{ fill: none; stroke: #1a5fb4; stroke-width: 1.5; }}
</style></head><body>
<h1>Frame-level anomaly scores</h1>
<pre>{html.escape(table)}</pre>
<p>{len(scored)} videos, the worst read first: normal videos by their highest score, anomalous ones by how little
their scores inside the annotated events (shaded) exceed those outside. The dashed line is score 0.5.</p>
{''.join(items)}
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
