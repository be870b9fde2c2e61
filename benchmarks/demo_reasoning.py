"""Does a demo QA model's reasoning say what it answers? Reads test predictions of the generated demo and prints, over
all replies (every option shift):

- right: the answered option is the clip's event;
- reasoning names the answered event: the event the reasoning concludes ("A red square appears, so *a fire breaks
  out*.") is the text of the option the reply answers;
- right with a reasoning that names it: both;
- colour described truly: the reasoning's first sentence names the square the clip shows ("No square" for normal).

The demo's reasoning has one fixed shape (vau.data.synthetic), so plain string rules read it; this is an analysis of
the demo, not a metric for free-form reasoning.

Usage:
    python benchmarks/demo_reasoning.py --annotations data/demo/test.csv outputs/demo_grpo_permuted/<run>/predictions_rank0.jsonl [...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vau.data.readers import read_rows
from vau.data.synthetic import KINDS


def analyse(predictions: Path, annotations: dict) -> dict[str, float]:
    colours = {kind.anomaly_class: kind.color_name for kind in KINDS}
    counts = {"right": 0, "names_answer": 0, "right_and_names": 0, "colour_true": 0}
    records = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
    for record in records:
        ann = annotations[record["video"]]
        truth = ann.options["ABCD".index(ann.answer)].lower()
        reply = record["response"] or ""
        named = reply.split(", so ", 1)[1].split(".", 1)[0].strip().lower() if ", so " in reply else None
        letter = record.get("prediction")
        shown = record.get("options") or list(ann.options)
        answered = shown["ABCD".index(letter)].lower() if letter in ("A", "B", "C", "D") else None
        first = reply.split("<think>", 1)[-1].split(", so", 1)[0]
        colour = colours.get(ann.anomaly_class.replace(" ", "_"), "")
        counts["right"] += answered == truth
        counts["names_answer"] += named is not None and named == answered
        counts["right_and_names"] += named is not None and named == answered == truth
        counts["colour_true"] += first.startswith("No square") if not colour else f"A {colour} square" in first
    return {k: v / max(1, len(records)) for k, v in counts.items()} | {"replies": len(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", default="data/demo/test.csv")
    parser.add_argument("predictions", nargs="+")
    args = parser.parse_args()
    annotations = {a.video: a for a in read_rows(args.annotations, "vau_bench")}
    print("| predictions | replies | right | reasoning names the answered event | right with a reasoning that names "
          "it | colour described truly |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in args.predictions:
        r = analyse(Path(path), annotations)
        print(f"| {path} | {r['replies']} | {r['right']:.3f} | {r['names_answer']:.3f} | {r['right_and_names']:.3f} | "
              f"{r['colour_true']:.3f} |")


if __name__ == "__main__":
    main()
