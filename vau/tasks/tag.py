"""Temporal anomaly grounding (TAG): when the anomaly happens, as [start, end] in seconds.

Why training and evaluation keep different rows: an IoU is undefined for a clip without an anomaly, so the
benchmark scores anomalous clips only (VAU-R1's evaluation skips normal clips; MSAD test: 120); in training,
normal clips teach the ``[0.0, 0.0]`` answer the prompt asks for (``data.views.tag_train_normal``). Rows with an
unknown interval (``-1``) have no TAG target at all. :meth:`TemporalGrounding.has_truth` is the set with a ground
truth (known interval, normal clips included), which ``python -m vau score`` splits into IoU over the anomalous
clips and false alarms over the normal ones.

Normal-clip convention (shared by the prompt, the rewards and the metrics): a normal clip's interval is
[0.0, 0.0]; the reply [0, 0] on a normal clip scores 1, any other reply 0; [0, 0] on an anomalous clip scores 0.
"""

from __future__ import annotations

import math

from vau.data.annotations import Annotation
from vau.metrics import FalseAlarmRate, MeanIoU, RecallAtIoU
from vau.parsing import extract_tag, interval_iou, is_normal_interval, parse_anomalous, parse_interval
from vau.registry import TASKS
from vau.tasks.base import DEFAULT_VIEWS, THINK_INSTRUCTION, Sample, Task, ViewOptions, think_target
from vau.tasks.reporting import iou_histogram

RECALL_THRESHOLDS = (0.3, 0.5, 0.7)


@TASKS.register("tag")
class TemporalGrounding(Task):
    """Evaluation: anomalous clips with a known interval (paper protocol; IoU is undefined on normal clips);
    training: those plus normal clips, target [0.0, 0.0]; rows with an unknown interval (-1): never."""

    answer_kind = "interval"
    answer_format = "the anomaly's [start, end] in seconds ([0.0, 0.0] for a normal video)"
    default_rewards = {"format": {"weight": 1.0}, "temporal_iou": {"weight": 1.0}}
    correct_threshold = 0.5  # our choice: "right" = IoU >= 0.5, the R@0.5 criterion
    score_name = "miou"

    def has_truth(self, ann: Annotation) -> bool:
        return ann.interval is not None

    def drop_reason(self, ann: Annotation, train: bool, options: ViewOptions = DEFAULT_VIEWS) -> str | None:
        if ann.has_anomaly_interval:
            return None
        if ann.is_normal:
            if train and options.tag_train_normal or not train and options.tag_eval_normal:
                return None
            return "normal clip (evaluation: IoU undefined)" if not train else "normal clip (tag_train_normal=false)"
        if ann.interval is None:
            return "interval unknown (-1)"
        if not ann.known_class:
            return "class unknown"
        return "empty interval on an anomalous clip"

    def prompt(self, sample: Sample) -> str:
        return (
            "Does an anomaly happen in this video, and when? "
            f"{THINK_INSTRUCTION} Answer with the start and end time in seconds as [start, end], "
            "or [0.0, 0.0] if the video is normal."
        )

    def target(self, sample: Sample) -> str:
        start, end = sample.interval if sample.interval is not None else (0.0, 0.0)
        return think_target(sample, f"[{start:.1f}, {end:.1f}]")

    def truth(self, sample: Sample) -> tuple[float, float] | None:
        """The valid known interval (finite, 0 <= start <= end); None for an unknown, negative or reversed one."""
        if sample.interval is None:
            return None
        try:
            start, end = (float(x) for x in sample.interval)
        except (TypeError, ValueError):
            return None
        if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start <= end):
            return None
        return start, end

    def parse(self, reply: str, sample: Sample) -> tuple[float, float] | None:
        return parse_interval(reply)

    def accuracy(self, reply: str, sample: Sample) -> float | None:
        """Temporal IoU of the reply with the truth (0 without a parseable interval)."""
        truth = self.truth(sample)
        if truth is None:
            return None
        predicted = self.parse(reply, sample)
        return 0.0 if predicted is None else interval_iou(predicted, truth)

    def interval_truth(self, sample: Sample) -> tuple[float, float] | None:
        return self.truth(sample)

    def answer_interval(self, value) -> list[float] | None:
        return None if value is None else [float(x) for x in value]

    def display(self, value, sample: Sample) -> str | None:
        """``[2.0, 6.5]`` (one decimal), or ``normal [0.0, 0.0]``."""
        if value is None:
            return None
        start, end = value
        return "normal [0.0, 0.0]" if is_normal_interval(value) else f"[{float(start):.1f}, {float(end):.1f}]"

    def report_sections(self, rows, completions, replies, classes) -> dict:
        return {"iou_histogram": iou_histogram(self, rows, completions)}

    def rows_to_score(self, kept: list[Annotation], predicted: set[str]) -> tuple[list[Annotation], int]:
        """Without a prediction for any normal clip (a VAU-R1-protocol test never asks about them) the normal clips
        are left out, so the false-alarm rate is reported only when normal clips were asked about."""
        normal = [a for a in kept if is_normal_interval(self.truth(self.sample(a)))]
        if any(a.video in predicted for a in normal):
            return kept, 0
        return [a for a in kept if a not in normal], len(normal)

    def metrics(self, classes=()) -> dict:
        metrics = {"tag_miou": MeanIoU(self)}
        for threshold in RECALL_THRESHOLDS:
            metrics[f"tag_r{round(threshold * 100)}"] = RecallAtIoU(threshold, task=self)
        metrics["tag_false_alarm"] = FalseAlarmRate(self)
        return metrics


@TASKS.register("tag_glue")
class TemporalGroundingGlue(TemporalGrounding):
    """The tag rows in VAU-R1's reply format: <think>..</think><answer>Anomaly|Normal</answer><glue>[s, e]</glue>;
    the interval is read from <glue> only (rows, truth and metrics as tag)."""

    format_tags = ("think", "answer", "glue")
    default_rewards = {"format": {"weight": 1.0}, "temporal_iou": {"weight": 1.0}, "anomaly_answer": {"weight": 1.0}}

    def prompt(self, sample: Sample) -> str:
        return (
            "Is there any anomaly in the video? If yes, answer Anomaly and give the precise time period of the "
            "anomaly; if no, answer Normal and give the time period [0.0, 0.0]. First reason inside <think> </think>, "
            "then give Anomaly or Normal inside <answer> </answer>, then the time period in seconds as [start, end] "
            "inside <glue> </glue>."
        )

    def target(self, sample: Sample) -> str:
        start, end = sample.interval if sample.interval is not None else (0.0, 0.0)
        answer = "Normal" if self.anomalous_truth(sample) is False else "Anomaly"
        return f"{think_target(sample, answer)}\n<glue>[{start:.1f}, {end:.1f}]</glue>"

    def parse(self, reply: str, sample: Sample) -> tuple[float, float] | None:
        glue = extract_tag(reply, "glue")
        return None if glue is None else parse_interval(f"<glue>{glue}</glue>")

    def follows_format(self, reply: str) -> bool:
        """The three tags in order, each once and non-blank, and an interval inside <glue> (VAU-R1's rule)."""
        return super().follows_format(reply) and self.parse(reply, None) is not None

    def anomalous_truth(self, sample: Sample) -> bool | None:
        """False for a normal clip (class Normal or interval [0, 0]), True for an anomalous one, None if unknown."""
        truth = self.truth(sample)
        if truth is None:
            return None
        return not (sample.is_normal or is_normal_interval(truth))

    def anomalous_reply(self, reply: str, sample: Sample) -> bool | None:
        """The Anomaly / Normal call inside <answer> (None without one, or when it says neither or both)."""
        answer = extract_tag(reply, "answer")
        return None if not answer else parse_anomalous(f"<answer>{answer}</answer>", ("Normal", "Anomaly"))
