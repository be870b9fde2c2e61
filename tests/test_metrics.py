"""torchmetrics metrics: hand-computed values, the paper's denominators, reward/metric agreement, and exact
synchronisation across 2 gloo processes."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vau.metrics import (
    BinaryAnomalyAccuracy,
    ChoiceAccuracy,
    ClassAccuracy,
    ClassMacroF1,
    FalseAlarmRate,
    FormatRate,
    MeanIoU,
    PerClassAccuracy,
    RecallAtIoU,
)
from vau.tasks import Sample
from vau.tasks.metrics import task_metrics

OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight starts", "Someone steals a bag")
CLASSES = ("Fire", "Fighting", "Normal")


def qa(answer: str) -> Sample:
    return Sample(task="qa", video=f"q{answer}.mp4", question="What happens?", options=OPTIONS, answer=answer)


def tag(start: float | None, end: float | None = None) -> Sample:
    interval = None if start is None else (start, end)
    return Sample(task="tag", video="t.mp4", interval=interval,
                  anomaly_class="Normal" if interval == (0.0, 0.0) else "Fire")


def cls(name: str) -> Sample:
    return Sample(task="cls", video="c.mp4", anomaly_class=name)


def describe(text: str) -> Sample:
    return Sample(task="describe", video="d.mp4", description=text)


def test_choice_accuracy_counts_unparseable_as_wrong_and_skips_other_tasks():
    metric = ChoiceAccuracy()
    metric.update(["<answer>B</answer>", "A or B", "<answer></answer>", "B"], [qa("B"), qa("A"), qa("C"), tag(1, 2)])
    assert metric.total == 3 and metric.compute().item() == pytest.approx(1 / 3)


def test_format_rate_uses_each_task_tags():
    metric = FormatRate()
    metric.update(["<think>x</think><answer>B</answer>", "B", "<think>x</think><answer> </answer>"],
                  [qa("B"), qa("B"), tag(1, 2)])
    assert metric.compute().item() == pytest.approx(1 / 3)


def test_temporal_metrics_follow_the_paper_denominators():
    samples = [tag(4.0, 8.0), tag(4.0, 8.0), tag(0.0, 10.0), tag(2.0, 3.0), tag(0.0, 0.0), tag(0.0, 0.0), tag(None)]
    replies = ["[4, 8]", "[2, 6]", "[0, 6]", "no idea", "[0, 0]", "[1, 3]", "[1, 2]"]
    ious = [1.0, 1 / 3, 0.6, 0.0]  # anomalous clips only; the normal and unknown ones are not in mIoU
    miou, fa = MeanIoU(), FalseAlarmRate()
    recalls = {t: RecallAtIoU(t) for t in (0.3, 0.5, 0.7)}
    for metric in (miou, fa, *recalls.values()):
        metric.update(replies, samples)
    assert miou.total == 4 and miou.compute().item() == pytest.approx(sum(ious) / 4)
    for threshold, metric in recalls.items():
        assert metric.compute().item() == pytest.approx(sum(i >= threshold for i in ious) / 4)
    assert fa.total == 2 and fa.compute().item() == pytest.approx(0.5)


def test_mean_iou_equals_the_temporal_iou_reward_mean_on_anomalous_clips():
    from vau.rewards import build_rewards

    samples = [tag(4.0, 8.0), tag(1.0, 9.5), tag(0.0, 3.0), tag(2.0, 2.5)]
    replies = ["[5, 9]", "from 0:01 to 0:05", "[0, 0]", "<answer>2.0 - 2.4</answer>"]
    rewards = build_rewards({"temporal_iou": {"weight": 1.0}})(replies, samples).per_reward["temporal_iou"]
    metric = MeanIoU()
    metric.update(replies, samples)
    assert metric.compute().item() == pytest.approx(sum(rewards) / len(rewards), rel=1e-6)


def test_classification_metrics_by_hand():
    samples = [cls("Fire"), cls("Fire"), cls("Fighting"), cls("Normal"), cls("Food Safety")]
    replies = ["fire", "Fighting", "fighting", "Fire", "food_safety"]
    binary, accuracy, f1, per_class = (BinaryAnomalyAccuracy(), ClassAccuracy(CLASSES), ClassMacroF1(CLASSES),
                                       PerClassAccuracy(CLASSES))
    for metric in (binary, accuracy, f1, per_class):
        metric.update(replies, samples)
    assert binary.compute().item() == pytest.approx(4 / 5)  # the normal clip called Fire is the one miss
    assert accuracy.compute().item() == pytest.approx(3 / 5)  # unlisted "Food Safety" still counts when named
    # Fire: tp 1, predicted 2, actual 2 -> 0.5; Fighting: tp 1, predicted 2, actual 1 -> 2/3; Normal: tp 0 -> 0
    assert f1.compute().item() == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert per_class.compute().tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert per_class.support().tolist() == [2, 1, 1]


def test_task_metrics_per_task():
    assert set(task_metrics("qa")) == {"format_rate", "qa_accuracy"}
    assert set(task_metrics("tag")) == {"format_rate", "tag_miou", "tag_r30", "tag_r50", "tag_r70", "tag_false_alarm"}
    assert set(task_metrics("cls")) == {"format_rate", "cls_binary_accuracy", "cls_accuracy", "cls_macro_f1"}
    assert set(task_metrics("describe")) == {"format_rate", "describe_bleu4", "describe_rouge_l"}
    for metric in task_metrics("tag").values():
        metric.update([], [])
        assert metric.compute().dim() == 0  # Lightning logs scalars


# ---------------------------------------------------------------------------------------------- 2 processes ----
def _data() -> tuple[list[str], list[Sample]]:
    """28 mixed replies: mostly right ones, then mostly wrong ones, so each rank's local value differs from the
    global one (an unsynced metric fails the test)."""
    samples = [qa("B"), qa("A"), qa("C"), tag(4, 8), tag(1, 9.5), tag(0, 0), tag(0, 0), tag(2, 3), cls("Fire"),
               cls("Normal"), cls("Fighting"), cls("Food Safety"), cls("Fire"),
               describe("a man breaks the window of a parked car"), describe("two cars collide at a crossing"),
               describe("a quiet street with people walking")]
    good = ["B", "<answer>A</answer>", "<think>x</think><answer>C</answer>", "[4, 8]", "1 - 9", "[0, 0]", "[0, 0]",
            "[2, 2.5]", "fire", "Normal", "Fighting", "food safety", "no anomaly",
            "a man breaks a window of the car", "<think>two cars collide at the crossing</think>", "a street"]
    bad = ["C", "A or B", "<answer></answer>", "[5, 9]", "[0, 0]", "[0, 0]", "[3, 4]", "", "Fighting", "fire",
           "a woman walks a dog", "cars"]
    return good + bad, samples + samples[:10] + samples[13:15]


SPLIT = 14  # rank 0 scores the first 14 replies (one description), rank 1 the other 14


def _metrics() -> dict:
    out = {f"{task}/{name}": m for task in ("qa", "tag", "cls", "describe")
           for name, m in task_metrics(task, CLASSES).items()}
    out["cls/per_class"] = PerClassAccuracy(CLASSES)
    return out


def _values(metrics: dict) -> dict[str, list[float]]:
    return {name: torch.atleast_1d(m.compute()).tolist() for name, m in metrics.items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        replies, samples = _data()
        metrics = _metrics()
        for metric in metrics.values():
            part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
            metric.update(replies[part], samples[part])
        values = _values(metrics)
        with open(f"{out_dir}/rank{rank}.json", "w") as handle:
            json.dump(values, handle)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_metrics_synced_over_two_gloo_processes_equal_one_process(tmp_path):
    replies, samples = _data()
    metrics = _metrics()
    for metric in metrics.values():
        metric.update(replies, samples)
    single = _values(metrics)
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        synced = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert synced.keys() == single.keys()
        for name, expected in single.items():
            got = synced[name]
            assert len(got) == len(expected), name
            for a, b in zip(got, expected):
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6), (rank, name, got, expected)
    # the data must exercise every metric: no NaN except per-class entries of absent classes
    assert all(not math.isnan(v[0]) for k, v in single.items() if k != "cls/per_class")
