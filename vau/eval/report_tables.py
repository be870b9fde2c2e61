"""Markdown tables of an evaluation report (:func:`vau.eval.report.evaluate`) in the paper's layout.

One table per task: rows are the sources (MSAD, UCF-Crime, ECVA) and the overall row, columns the task's metrics in
percent; an ``n`` column follows each run of metrics that share a denominator (TAG: mIoU and R@k count anomalous
clips, the false-alarm rate normal clips). Then the answer-position table of the choice task (raw and circular
accuracy beside the constant-letter baselines), the confusion matrix and the IoU histogram. ``score`` prints these
tables and writes them to ``score.md``; the test stage logs them to TensorBoard as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vau.data.annotations import source_name

LABELS = {"accuracy": "Acc.", "miou": "mIoU", "r30": "R@0.3", "r50": "R@0.5", "r70": "R@0.7",
          "false_alarm": "FA(normal)", "binary_accuracy": "Bin.Acc.", "macro_f1": "MacroF1", "format_rate": "Format",
          "initial_accuracy": "Init.Acc.", "initial_miou": "Init.mIoU", "delta_i2c": "Δi→c", "delta_c2i": "Δc→i",
          "reflect_rate": "Reflect"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> list[str]:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _groups(entry: Mapping) -> list[tuple[str, Mapping]]:
    rows = [(source_name(s), g) for s, g in entry["by_source"].items()]
    return [*rows, ("Overall", entry["overall"])]


def task_table(task: str, entry: Mapping) -> list[str]:
    """The per-source table of one task (values in percent, an ``n`` after each run of equal denominators)."""
    groups = _groups(entry)
    keys = [k for k in entry["overall"]["counts"] if k != "format_rate"]
    keys += ["format_rate"] if "format_rate" in entry["overall"]["counts"] else []
    header, columns = ["Source"], []  # columns: ("value", key) or ("n", key)
    for i, key in enumerate(keys):
        header.append(LABELS.get(key, key))
        columns.append(("value", key))
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        if nxt is None or any(g["counts"].get(key) != g["counts"].get(nxt) for _, g in groups):
            header.append("n")
            columns.append(("n", key))
    rows = [[name, *(_pct(g.get(k)) if kind == "value" else str(g["counts"].get(k, 0)) for kind, k in columns)]
            for name, g in groups]
    lines = [f"### {task.upper()} (percent)", "", *_table(header, rows)]
    if entry.get("per_class"):  # already in percent (the layout of ``score``'s ``per_class`` entry)
        per_class = [[name, "-" if v["value"] is None else f"{v['value']:.2f}", str(v["n"])]
                     for name, v in entry["per_class"].items()]
        lines += ["", f"{task.upper()} per-class accuracy (percent, overall):", "",
                  *_table(["Class", "Acc.", "n"], per_class)]
    return lines


def position_table(position: Mapping) -> list[str]:
    """Raw and circular accuracy of the choice task beside the accuracy of always answering each letter."""
    letters = list(position["constant"])
    initial = position.get("initial_circular") is not None  # replies that reflect: their first answer's too
    header = ["Source", "Raw", "Circular", *(["Initial circular"] if initial else []),
              *(f"Always {x}" for x in letters), "n"]
    groups = [(source_name(s), g) for s, g in position["by_source"].items()] + [("Overall", position)]
    rows = [[name, _pct(g["raw"]), _pct(g["circular"]), *([_pct(g.get("initial_circular"))] if initial else []),
             *(_pct(g["constant"].get(x)) for x in letters), str(g["n"])] for name, g in groups]
    shifts = position["shifts"]
    note = (f"Circular: right under every shift 0..{len(letters) - 1} (shifts present: {shifts}; a missing shift "
            f"counts wrong)." if position["circular"] is not None else
            "Circular: - (no record with a shift other than 0; see docs/scoring.md).")
    return [f"### {position['task'].upper()} answer position (percent)", "", *_table(header, rows), "", note]


def confusion_table(confusion: Mapping) -> list[str]:
    """Counts, true class per row, predicted class per column (``unparsed``: the reply names no class)."""
    rows = [[truth, *(str(v) for v in row)] for truth, row in zip(confusion["classes"], confusion["matrix"])]
    return [f"### {confusion['task'].upper()} confusion (rows: truth, columns: prediction)", "",
            *_table(["truth \\ predicted", *confusion["columns"]], rows)]


def histogram_table(hist: Mapping) -> list[str]:
    """Clip counts per IoU bin (anomalous clips; the last bin includes IoU 1)."""
    edges = hist["edges"]
    bins = [f"[{a:.1f}, {b:.1f}{']' if i == len(edges) - 2 else ')'}" for i, (a, b) in enumerate(zip(edges, edges[1:]))]
    return [f"### {hist['task'].upper()} IoU histogram (anomalous clips, n={hist['n']})", "",
            *_table(["IoU", *bins], [["clips", *(str(c) for c in hist["counts"])]])]


def report_tables(report: Mapping) -> str:
    """Every table of ``report``, separated by blank lines."""
    blocks = [task_table(task, entry) for task, entry in report["tasks"].items()]
    if report.get("qa_position"):
        blocks.append(position_table(report["qa_position"]))
    if report.get("confusion"):
        blocks.append(confusion_table(report["confusion"]))
    if report.get("iou_histogram"):
        blocks.append(histogram_table(report["iou_histogram"]))
    return "\n\n".join("\n".join(block) for block in blocks)
