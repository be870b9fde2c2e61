"""Temporal-grounding rewards (TAG samples with a known interval).

They apply to every task whose answer is an interval (``Task.interval_truth``: ``tag``, its variants, plugin tasks).

Normal-clip convention (shared with the TAG prompt in vau.tasks.tag and the metrics in vau.metrics): a normal clip's
interval is [0.0, 0.0]. The reply [0, 0] on a normal clip scores 1; any other reply scores 0; the reply [0, 0] on
an anomalous clip scores 0. An unknown ground truth (None, "-1" in the CSV, negative or reversed) gives None, so
no reply is rewarded for it.

Duration: :func:`temporal_iou_normalized` needs the video length D in seconds. It reads ``ctx["durations"]``
(one float per completion) first, else ``sample.extra["duration"]``; with neither it returns None for that
anomalous sample (normal clips need no duration).
"""

from __future__ import annotations

import math

from vau.parsing import interval_iou, is_normal_interval, parse_interval
from vau.registry import REWARDS
from vau.tasks import Sample, task_of


def predicted_interval(text: str, sample: Sample) -> tuple[float, float] | None:
    """The interval a reply gives, read the way the sample's task reads it (``tag_glue``: from ``<glue>`` only)."""
    task = task_of(sample)
    return task.parse(text, sample) if task is not None else parse_interval(text)


def known_interval(sample: Sample) -> tuple[float, float] | None:
    """The sample's ground-truth interval when its task answers with an interval and it is valid, else None."""
    task = task_of(sample)
    return task.interval_truth(sample) if task is not None else None


@REWARDS.register("temporal_iou")
def temporal_iou(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
    """IoU of the reply's [start, end] with the truth; normal clips: 1 only for [0, 0]; range [0, 1].

    Example:
        >>> temporal_iou(["<answer>[2.0, 6.0]</answer>"], [Sample(task="tag", video="v.mp4", interval=(4.0, 8.0))])
        [0.3333333333333333]
    """
    out: list[float | None] = []
    for text, sample in zip(completions, samples):
        truth = known_interval(sample)
        if truth is None:
            out.append(None)
            continue
        predicted = predicted_interval(text, sample)
        out.append(0.0 if predicted is None else interval_iou(predicted, truth))
    return out


def _duration(sample: Sample, index: int, durations) -> float | None:
    value = None
    try:
        if durations is not None and index < len(durations):
            value = durations[index]
        if value is None and isinstance(sample.extra, dict):
            value = sample.extra.get("duration")
        value = None if value is None else float(value)
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


@REWARDS.register("temporal_iou_normalized")
def temporal_iou_normalized(completions: list[str], samples: list[Sample], **ctx) -> list[float | None]:
    """IoU x (1 - |ds|/D) x (1 - |de|/D), D the video duration, boundary errors ds, de; range [0, 1].

    Sharper than plain IoU near the optimum: two replies with equal IoU differ by how far each boundary is off,
    relative to the video length. D comes from ``ctx["durations"]`` or ``sample.extra["duration"]``; each factor
    is clipped to [0, 1]. Normal clips follow the same [0, 0] convention as ``temporal_iou``.
    """
    durations = ctx.get("durations")
    out: list[float | None] = []
    for index, (text, sample) in enumerate(zip(completions, samples)):
        truth = known_interval(sample)
        if truth is None:
            out.append(None)
            continue
        predicted = predicted_interval(text, sample)
        if is_normal_interval(truth):
            out.append(float(predicted is not None and is_normal_interval(predicted)))
            continue
        length = _duration(sample, index, durations)
        if length is None:
            out.append(None)
            continue
        if predicted is None:
            out.append(0.0)
            continue
        start_factor = min(1.0, max(0.0, 1.0 - abs(predicted[0] - truth[0]) / length))
        end_factor = min(1.0, max(0.0, 1.0 - abs(predicted[1] - truth[1]) / length))
        out.append(interval_iou(predicted, truth) * start_factor * end_factor)
    return out
