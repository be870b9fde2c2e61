"""Frame-level anomaly-detection metrics in the protocols video-anomaly papers report (issue 21):

- ROC-AUC over all test frames (UCF-Crime, MSAD, ShanghaiTech convention),
- ROC-AUC over the frames of anomalous videos only,
- average precision (AP; XD-Violence),
- the false-alarm rate on normal videos: the share of their frames scored at or above a threshold.

Exact, not binned: the AUC is the Mann-Whitney statistic with tied scores counted one half (what the area under the
trapezoidal ROC curve equals, as in scikit-learn's ``roc_auc_score``), and AP is the step-wise sum over distinct score
thresholds, ``sum_n (R_n - R_(n-1)) P_n`` (scikit-learn's ``average_precision_score``); tests compare both with
scikit-learn, ties and a video without any anomalous frame included.

The metric keeps every frame's score (``dist_reduce_fx="cat"``), so under DDP each rank updates with its own videos
and ``compute`` sees all frames of all ranks.

Example:
    >>> import torch
    >>> metric = FrameAnomalyScores()
    >>> metric.update(torch.tensor([0.1, 0.9, 0.8]), torch.tensor([0, 1, 1]))   # an anomalous video
    >>> metric.update(torch.tensor([0.2, 0.1]), torch.tensor([0, 0]))           # a normal video
    >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
    {'auc': 1.0, 'auc_anomalous_videos': 1.0, 'ap': 1.0, 'false_alarm_rate': 0.0}
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC-AUC of ``scores`` for binary ``labels`` (1 = anomalous); NaN when one class is absent.

    Mann-Whitney: the probability that a random anomalous frame scores above a random normal one, ties counting
    one half; computed from average ranks in O(n log n).
    """
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision: the precision at each distinct threshold (score values, high to low), weighted by the
    recall gained there. Frames with equal scores enter together. NaN without an anomalous frame."""
    scores, labels = scores.double().flatten(), labels.double().flatten()
    total = labels.sum()
    if total == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, labels = scores[order], labels[order]
    tp = torch.cumsum(labels, 0)
    fp = torch.cumsum(1 - labels, 0)
    # the last frame of each run of equal scores: the point of the curve that threshold gives
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / total
    gained = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((gained * precision).sum())


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    n = values.numel()
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    group = torch.cumsum(starts.long(), 0) - 1  # group index of each sorted position
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    sums = torch.zeros(int(group[-1]) + 1, dtype=torch.float64).index_add_(0, group, positions)
    counts = torch.zeros_like(sums).index_add_(0, group, torch.ones_like(positions))
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (sums / counts)[group]
    return ranks


class FrameAnomalyScores(Metric):
    """Frame-level AUC (all videos and anomalous videos only), AP and the false-alarm rate on normal videos.

    Update once per video with its per-frame anomaly scores and 0/1 frame labels; a video whose labels are all 0 is
    a normal video (its frames count for the false-alarm rate and the all-frames AUC, not for the anomalous-only AUC).

    Args:
        threshold: a frame scored at or above it is called anomalous (false-alarm rate).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("anomalous_video", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
        labels = torch.as_tensor(labels).flatten().long()
        if scores.shape != labels.shape:
            raise ValueError(f"one label per frame: {scores.numel()} scores, {labels.numel()} labels")
        if not torch.isfinite(scores).all():
            raise ValueError("frame scores must be finite (a NaN/inf score has no rank)")
        self.scores.append(scores)
        self.labels.append(labels)
        self.anomalous_video.append(torch.full_like(labels, int(bool(labels.any()))))

    def compute(self) -> dict[str, torch.Tensor]:
        scores, labels, anomalous = (_cat(x) for x in (self.scores, self.labels, self.anomalous_video))
        normal_frames = anomalous == 0
        in_anomalous = anomalous == 1
        false_alarms = (scores[normal_frames] >= self.threshold).double()
        as_tensor = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731  (float32 would round AUCs)
        return {
            "auc": as_tensor(roc_auc(scores, labels)),
            "auc_anomalous_videos": as_tensor(roc_auc(scores[in_anomalous], labels[in_anomalous])),
            "ap": as_tensor(average_precision(scores, labels)),
            "false_alarm_rate": false_alarms.mean() if false_alarms.numel() else as_tensor(float("nan")),
        }


def _cat(state) -> torch.Tensor:
    """A ``cat`` state: a list of tensors before a sync, one tensor after it."""
    if isinstance(state, torch.Tensor):
        return state
    return torch.cat(state) if state else torch.zeros(0)
