"""Frame-level AUC / AP / false-alarm rate (vau/frame_metrics.py) against scikit-learn on the same frame scores."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vau.frame_metrics import FrameAnomalyScores, average_precision, roc_auc

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (dev extra) is the reference")


def _videos(seed: int, n_videos: int = 6, ties: bool = True):
    """Per-video (scores, labels): a few anomalous videos with one event each, and normal videos (all 0)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for v in range(n_videos):
        frames = int(torch.randint(20, 60, (1,), generator=g))
        labels = torch.zeros(frames, dtype=torch.long)
        if v % 2 == 0:  # anomalous: one event
            start = int(torch.randint(0, frames - 5, (1,), generator=g))
            labels[start:start + int(torch.randint(3, 10, (1,), generator=g))] = 1
        scores = torch.rand(frames, generator=g) * 0.6 + 0.4 * labels
        if ties:
            scores = (scores * 10).round() / 10  # many equal scores, inside and across classes
        out.append((scores, labels))
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [True, False])
def test_auc_and_ap_equal_scikit_learn(seed, ties):
    videos = _videos(seed, ties=ties)
    scores = torch.cat([s for s, _ in videos])
    labels = torch.cat([y for _, y in videos])
    assert roc_auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        sklearn_metrics.average_precision_score(labels, scores), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=40))
def test_auc_and_ap_equal_scikit_learn_on_any_small_input(pairs):
    scores = torch.tensor([s / 4 for s, _ in pairs], dtype=torch.float64)
    labels = torch.tensor([int(y) for _, y in pairs])
    if labels.min() == labels.max():
        assert math.isnan(roc_auc(scores, labels))
        return
    assert roc_auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        sklearn_metrics.average_precision_score(labels, scores), abs=1e-12)


def test_the_metric_reports_every_protocol_and_merges_like_ddp():
    """Updated video by video; two halves merged (the reduction DDP uses, dist_reduce_fx='cat') give the same numbers
    as one metric over all videos. The anomalous-videos AUC leaves the normal videos' frames out."""
    videos = _videos(3)
    whole, first, second = FrameAnomalyScores(threshold=0.5), FrameAnomalyScores(threshold=0.5), \
        FrameAnomalyScores(threshold=0.5)
    for i, (s, y) in enumerate(videos):
        whole.update(s, y)
        (first if i < 3 else second).update(s, y)
    first.merge_state(second)
    got, merged = whole.compute(), first.compute()
    assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in merged.items()}
    anomalous = [(s, y) for s, y in videos if y.any()]
    normal_scores = torch.cat([s for s, y in videos if not y.any()])
    assert float(got["auc_anomalous_videos"]) == pytest.approx(sklearn_metrics.roc_auc_score(
        torch.cat([y for _, y in anomalous]), torch.cat([s for s, _ in anomalous])), abs=1e-12)
    assert float(got["false_alarm_rate"]) == pytest.approx(float((normal_scores >= 0.5).double().mean()))


def test_constant_and_random_scores_sit_at_one_half():
    """The baselines `score` prints beside a model: a constant score has AUC 0.5 exactly (one tie); random scores
    about 0.5."""
    videos = _videos(1)
    labels = torch.cat([y for _, y in videos])
    assert roc_auc(torch.zeros(labels.numel()), labels) == 0.5
    noise = torch.rand(labels.numel(), generator=torch.Generator().manual_seed(0))
    assert abs(roc_auc(noise, labels) - 0.5) < 0.15


def test_bad_input_is_named():
    metric = FrameAnomalyScores()
    with pytest.raises(ValueError, match="one label per frame: 3 scores, 2 labels"):
        metric.update(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        metric.update(torch.tensor([float("nan"), 0.2]), torch.tensor([0, 1]))
