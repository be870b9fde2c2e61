"""Anomaly classification: which of the 20 classes (19 anomaly types + Normal) the clip shows, or just whether
it is anomalous (``cls_binary``)."""

from __future__ import annotations

from vau.data.annotations import ANOMALY_CLASSES, Annotation
from vau.metrics import BinaryAnomalyAccuracy, BinaryFalseAlarmRate, ClassAccuracy, ClassMacroF1, PerClassAccuracy
from vau.parsing import class_candidates, is_normal_class, normalize_label, parse_anomalous, parse_class
from vau.registry import TASKS
from vau.tasks.base import THINK_INSTRUCTION, Sample, Task, think_target
from vau.tasks.reporting import binary_confusion, class_confusion


class _ClassTask(Task):
    """What both classification tasks share: rows with a known class, and the anomalous/normal call."""

    missing_truth = "class not among the 20 labels"

    def has_truth(self, ann: Annotation) -> bool:
        return ann.known_class

    def drop_reason(self, ann: Annotation, train: bool, options=None) -> str | None:
        return None if ann.known_class else f"{self.missing_truth} ({ann.anomaly_class or 'empty'})"

    def anomalous_truth(self, sample: Sample) -> bool | None:
        """True for an anomalous clip, False for a normal one, None without a class."""
        truth = sample.anomaly_class or ""
        return None if not normalize_label(truth) else not is_normal_class(truth)

    def anomalous_reply(self, reply: str, sample: Sample) -> bool | None:
        """Whether the reply calls the clip anomalous (any anomaly class counts), None when it does not say."""
        return parse_anomalous(reply, class_candidates(sample.anomaly_class or ""))

    def class_score(self, reply: str, sample: Sample, binary: bool = False) -> float | None:
        if not normalize_label(sample.anomaly_class or ""):
            return None
        if binary:  # any anomaly class counts as anomalous (VAU-R1's binary accuracy)
            return float(self.anomalous_reply(reply, sample) is self.anomalous_truth(sample))
        return self.accuracy(reply, sample)  # cls: the 20-way class; cls_binary: the call is the class

    def report_metrics(self) -> dict:
        """The false-alarm rate of the anomalous/normal call on normal clips."""
        return {f"{self.name}_false_alarm": BinaryFalseAlarmRate(self)}


@TASKS.register("cls")
class AnomalyClassification(_ClassTask):
    """Rows whose class is one of the 20 labels (19 anomaly types + Normal); the reply names the class (20-way)."""

    answer_kind = "class"
    answer_format = "the anomaly class (or Normal)"
    default_rewards = {"format": {"weight": 1.0}, "class_match": {"weight": 1.0}}

    def prompt(self, sample: Sample) -> str:
        return (
            "Which anomaly class does this video show? Choose one of: " + ", ".join(ANOMALY_CLASSES) + ". "
            f"{THINK_INSTRUCTION} Answer with the class name only."
        )

    def target(self, sample: Sample) -> str:
        return think_target(sample, sample.anomaly_class)

    def truth(self, sample: Sample) -> str | None:
        truth = sample.anomaly_class or ""
        return truth if normalize_label(truth) else None

    def parse(self, reply: str, sample: Sample) -> str | None:
        return parse_class(reply, class_candidates(sample.anomaly_class or ""))

    def accuracy(self, reply: str, sample: Sample) -> float | None:
        truth = self.truth(sample)
        if truth is None:
            return None
        predicted = self.parse(reply, sample)
        return float(predicted is not None and normalize_label(predicted) == normalize_label(truth))

    def metrics(self, classes=ANOMALY_CLASSES) -> dict:
        return {"cls_binary_accuracy": BinaryAnomalyAccuracy(self), "cls_accuracy": ClassAccuracy(classes, task=self),
                "cls_macro_f1": ClassMacroF1(classes, task=self)}

    def per_class_metric(self, classes=ANOMALY_CLASSES):
        return PerClassAccuracy(classes, task=self)

    def report_sections(self, rows, completions, replies, classes) -> dict:
        return {"confusion": class_confusion(self, rows, completions, classes)}


@TASKS.register("cls_binary")
class BinaryClassification(_ClassTask):
    """The cls rows, answered Anomaly / Normal (VAU-R1's binary accuracy as a task of its own)."""

    answer_kind = "binary"
    answer_format = "Anomaly or Normal"

    def prompt(self, sample: Sample) -> str:
        return f"Is there an anomaly in this video? {THINK_INSTRUCTION} Answer with Anomaly or Normal."

    def target(self, sample: Sample) -> str:
        return think_target(sample, "Normal" if sample.is_normal else "Anomaly")

    def truth(self, sample: Sample) -> bool | None:
        """True for an anomalous clip, False for a normal one."""
        return self.anomalous_truth(sample)

    def parse(self, reply: str, sample: Sample) -> bool | None:
        return self.anomalous_reply(reply, sample)

    def metrics(self, classes=()) -> dict:
        return {"cls_binary_accuracy": BinaryAnomalyAccuracy(self)}

    def display(self, value, sample: Sample) -> str | None:
        return None if value is None else ("Anomaly" if value else "Normal")

    def report_sections(self, rows, completions, replies, classes) -> dict:
        # the report shows one confusion matrix: a class task's when there is one (its key "confusion" wins)
        return {"binary_confusion": binary_confusion(self, rows, completions)}
