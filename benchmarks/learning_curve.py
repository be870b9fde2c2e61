"""GRPO learning proof on the generated demo: reward and held-out QA accuracy against optimiser steps.

Stage 1 (``conf=demo_sft_chance``) teaches the reply format, the option check and reading the options, with the
event (and so the option) named at random: a chance-level policy that reads options. Stage 2
(``conf=demo_grpo_permuted``) runs GRPO from it with format + choice-accuracy rewards and validates on the held-out
split (circular accuracy, every option shift) every ``trainer.val_check_interval`` steps.
``--task qa_v5`` is the earlier pair on fixed-order options (demo data version 5), where the letter is the class.
The table shows the mean training reward over each interval and the held-out accuracy at its end.

Usage:
    python benchmarks/learning_curve.py                 # QA, the defaults of the two experiments
    python benchmarks/learning_curve.py --task tag      # TAG: SFT on intervals, then GRPO with temporal IoU
    python benchmarks/learning_curve.py --task qa_reflect   # SRVAU-R1: SFT on reflection chains, GRPO with the
                                                            # reflection rewards; before/after table of the
                                                            # initial/final accuracy and the corrections
    python benchmarks/learning_curve.py -- trainer.max_steps=200   # extra overrides for the GRPO stage
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

STAGES = {  # (SFT experiment, GRPO experiment, training reward, held-out metric: circular accuracy first for QA)
    "qa": ("demo_sft_chance", "demo_grpo_permuted", "train/reward/choice_accuracy", "val/qa_circular_accuracy"),
    "qa_v5": ("demo_sft_shuffled", "demo_grpo", "train/reward/choice_accuracy", "val/qa_accuracy"),
    "tag": ("demo_sft_tag", "demo_grpo_tag", "train/reward/temporal_iou", "val/tag_miou"),
    "qa_reflect": ("demo_sft_reflect_qa", "demo_grpo_reflect_qa", "train/reward/choice_accuracy",
                   "val/qa_reflect_circular_accuracy"),
}
# Overrides of both stages: qa_v5 regenerates the demo with its options in one fixed order (data version 5).
BOTH = {"qa_v5": ["data.generate.permute_options=false", "data.qa_shifts=null"]}
RAW = {"qa": "val/qa_accuracy", "qa_reflect": "val/qa_reflect_accuracy"}  # printed beside circular accuracy
# Reflect tasks: what the reflection did, before (the SFT policy) and after GRPO, on the test split.
REFLECTION = ("initial_accuracy", "accuracy", "delta_i2c", "delta_c2i", "reflect_rate")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((run_dir / "tensorboard").glob("events.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def fit(conf: str, run_dir: Path, extra: list[str]) -> float:
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "vau", "fit", f"conf={conf}", f"run_dir={run_dir}", "trainer.enable_progress_bar=false",
           *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - started) / 60


def distinct_answers(run_dir: Path) -> str:
    """How many different answers the test predictions hold: a policy that answers the same for every clip
    can still score well (a TAG interval where anomalies usually are), and only this shows it."""
    import json

    from vau.parsing import answer_body

    answers = [answer_body(json.loads(line)["response"]).strip()
               for path in sorted(run_dir.glob("predictions_rank*.jsonl")) for line in path.open()]
    return f"{len(set(answers))} distinct answers over {len(answers)} test clips"


def table(values: dict, reward_tag: str, metric_tag: str, raw_tag: str | None = None) -> str:
    # One value per step: the last step's scalars can be written twice (vau.callbacks.LogLastStep makes sure a
    # run's final step is logged even off the log_every_n_steps grid).
    rewards = sorted(dict(values.get(reward_tag, [])).items())
    evals = sorted(dict(values.get(metric_tag, [])).items())
    raw = dict(values.get(raw_tag, [])) if raw_tag else {}
    extra = f" held-out {raw_tag} |" if raw_tag else ""
    lines = [f"| step | mean {reward_tag} since previous row | held-out {metric_tag} |{extra}",
             "|---:|---:|---:|" + ("---:|" if raw_tag else "")]
    previous = -1
    for step, metric in evals:
        window = [v for s, v in rewards if previous < s <= step]
        shown = f"{sum(window) / len(window):.3f}" if window else "-"
        cell = (f" {raw[step]:.3f} |" if step in raw else " - |") if raw_tag else ""
        lines.append(f"| {step + 1} | {shown} | {metric:.3f} |{cell}")
        previous = step
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(STAGES), default="qa")
    parser.add_argument("--out", default="outputs/learning_curve")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the GRPO stage")
    args = parser.parse_args()
    sft_conf, grpo_conf, reward_tag, metric_tag = STAGES[args.task]
    out = Path(args.out) / args.task
    sft_dir, grpo_dir = out / "sft", out / "grpo"
    both = BOTH.get(args.task, [])
    sft_minutes = fit(sft_conf, sft_dir, both)
    sft_ckpt = sft_dir / "checkpoints" / "last.ckpt"
    grpo_minutes = fit(grpo_conf, grpo_dir, [*both, f"init_from={sft_ckpt}", *args.overrides])
    start = scalars(sft_dir).get(metric_tag.replace("val/", "test/"), [(0, float("nan"))])[-1][1]
    end = scalars(grpo_dir).get(metric_tag.replace("val/", "test/"), [(0, float("nan"))])[-1][1]
    name = metric_tag.split("/")[-1]
    print(f"\nstage 1 ({sft_conf}): {sft_minutes:.1f} min, held-out {name} of the starting policy (test split): "
          f"{start:.3f}; {distinct_answers(sft_dir)}")
    print(f"stage 2 ({grpo_conf}): {grpo_minutes:.1f} min, test {name} after GRPO: {end:.3f}; "
          f"{distinct_answers(grpo_dir)}\n")
    print(table(scalars(grpo_dir), reward_tag, metric_tag, RAW.get(args.task)))
    if args.task.endswith("_reflect"):
        print()
        print(reflection_table(args.task, scalars(sft_dir), scalars(grpo_dir)))


def reflection_table(task: str, before: dict, after: dict) -> str:
    """Initial and final accuracy, Δ(i→c), Δ(c→i) and the reflect rate of the test split, before and after GRPO."""
    def last(values: dict, name: str) -> str:
        points = values.get(f"test/{task}_{name}")
        return f"{points[-1][1]:.3f}" if points else "-"

    lines = [f"| {task} (test split) | {' | '.join(REFLECTION)} | Δ(i→c) − Δ(c→i) |",
             "|---|" + "---:|" * (len(REFLECTION) + 1)]
    for label, values in (("SFT start", before), ("after GRPO", after)):
        cells = [last(values, name) for name in REFLECTION]
        net = "-" if "-" in cells[2:4] else f"{float(cells[2]) - float(cells[3]):+.3f}"
        lines.append(f"| {label} | {' | '.join(cells)} | {net} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
