"""Figures of an evaluation report (the CLS confusion matrix, the TAG IoU histogram) and its TensorBoard logging.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend state, no display), and PNGs
are written without the version/date metadata matplotlib would embed, so the same report gives the same bytes.
:func:`log_report` writes what ``score`` writes as files into a TensorBoard run instead (the test stage).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vau.eval.report_tables import report_tables
from vau.parsing import is_normal_interval

PLOT_FILES = {"confusion": "confusion_{task}.png", "iou_histogram": "iou_hist_{task}.png"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def confusion_figure(confusion: Mapping) -> Figure:
    """Heat map of the counts: true class per row, predicted class (and ``unparsed``) per column."""
    import numpy as np

    matrix = np.asarray(confusion["matrix"], dtype=float).reshape(len(confusion["classes"]), len(confusion["columns"]))
    rows, cols = matrix.shape
    fig = _figure(max(4.0, 1.0 + 0.45 * cols), max(3.0, 1.2 + 0.4 * rows))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1.0, float(matrix.max(initial=0))), aspect="auto")
    ax.set_xticks(range(cols), labels=confusion["columns"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(rows), labels=confusion["classes"], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(f"{confusion['task']} confusion (n={int(matrix.sum())})")
    half = matrix.max(initial=0) / 2
    for r in range(rows):
        for c in range(cols):
            if matrix[r, c]:
                ax.text(c, r, str(int(matrix[r, c])), ha="center", va="center", fontsize=7,
                        color="white" if matrix[r, c] > half else "black")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def iou_figure(hist: Mapping) -> Figure:
    """Bar chart of clip counts per IoU bin (anomalous clips; the last bin includes IoU 1)."""
    edges, counts = hist["edges"], hist["counts"]
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot()
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge", edgecolor="black",
           color="tab:orange")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xticks(edges)
    ax.set_xlabel("temporal IoU")
    ax.set_ylabel("clips")
    ax.set_title(f"{hist['task']} IoU histogram (n={hist['n']})")
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG with no embedded software/date metadata (same figure, same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def write_plots(report: Mapping, folder: Path) -> dict[str, str]:
    """Draw the report's plots into ``folder``; returns ``{"confusion": name, "iou_histogram": name}`` (those
    drawn), relative to ``folder``."""
    drawn = {}
    for key, draw in (("confusion", confusion_figure), ("iou_histogram", iou_figure)):
        part = report.get(key)
        if part and (part.get("matrix") or part.get("n")):  # nothing to draw without a scored clip
            name = PLOT_FILES[key].format(task=part["task"])
            save_png(draw(part), Path(folder) / name)
            drawn[key] = name
    return drawn


def log_report(writer, report: Mapping, step: int, prefix: str = "test") -> list[str]:
    """Log the report to a TensorBoard ``SummaryWriter``: the confusion figure, the IoU histogram (as a histogram
    and a figure), per-source scalars and the tables as text. Returns the tags written."""
    tags = []
    confusion = report.get("confusion")
    if confusion and confusion["matrix"]:
        tag = f"{prefix}/confusion_{confusion['task']}"
        writer.add_figure(tag, confusion_figure(confusion), global_step=step, close=False)
        tags.append(tag)
    hist = report.get("iou_histogram")
    if hist:
        import numpy as np

        task = hist["task"]
        ious = [c["score"] for c in report["clips"] if c["task"] == task and c["score"] is not None
                and c["true_interval"] is not None and not is_normal_interval(c["true_interval"])]
        if ious:
            tag = f"{prefix}/iou_{task}"
            writer.add_histogram(tag, np.asarray(ious, dtype=float), global_step=step, bins=np.asarray(hist["edges"]))
            tags.append(tag)
        tag = f"{prefix}/iou_hist_{task}"
        writer.add_figure(tag, iou_figure(hist), global_step=step, close=False)
        tags.append(tag)
    for task, entry in report["tasks"].items():
        for source, group in entry["by_source"].items():
            for key, value in group.items():
                if key not in ("n", "counts", "names") and value is not None:
                    tag = f"{prefix}/by_source/{source}/{task}_{key}"
                    writer.add_scalar(tag, value, global_step=step)
                    tags.append(tag)
    tag = f"{prefix}/report"
    writer.add_text(tag, report_tables(report), global_step=step)
    tags.append(tag)
    writer.flush()
    return tags
