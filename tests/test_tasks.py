"""Every registered task (the registry is the test matrix): rows, prompt, target, parse round trip, rewards, metrics.

Each task is exercised on annotation rows read from a real CSV written here: a row of every kind (question or not,
anomalous / normal / unknown interval, known or unknown class, with or without a description).
"""

from __future__ import annotations

import csv
import math

import pytest

from vau.data.annotations import read_annotations
from vau.registry import TASKS, load_builtins
from vau.rewards import build_rewards
from vau.tasks import Task, ViewOptions, get_task, task_names
from vau.tasks.metrics import task_metrics

load_builtins()
HEADER = ["Video Name", "Question", "Option 1", "Option 2", "Option 3", "Option 4", "Correct Option", "Key Object",
          "Description", "Reasoning", "Anomaly Class", "Start Time", "End Time"]
ROWS = [
    ["msad_Fire_1.mp4", "What happens?", "Nothing", "A fire starts", "A fight", "A theft", "B", "flames",
     "A fire starts at a shop.", "Flames spread from 2 s.", "Fire", "2.0", "7.5"],
    ["ucf_Normal_2.mp4", "What happens?", "People walk", "A fire starts", "A fight", "A theft", "A", "people",
     "People walk by.", "Nothing unusual.", "Normal", "0.0", "0.0"],
    ["ecva_3.mp4", "-1", "-1", "-1", "-1", "-1", "-1", "car", "A car hits a pole.", "A crash.", "Traffic_Accident",
     "-1", "-1"],
    ["msad_4.mp4", "What happens?", "Nothing", "A fire starts", "A fight", "A theft", "C", "", "Two men fight.", "",
     "Unheard_Class", "1.0", "3.0"],
    ["ucf_5.mp4", "-1", "-1", "-1", "-1", "-1", "-1", "", "", "", "", "-1", "-1"],
]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "rows.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([HEADER, *ROWS])
    return read_annotations(path)


def test_builtin_tasks_are_registered_in_paper_order():
    assert task_names()[:5] == ["qa", "tag", "cls", "cls_binary", "describe"]
    assert set(task_names()) == set(TASKS.names())


@pytest.mark.parametrize("name", task_names())
def test_task_keeps_rows_and_says_why_it_drops_the_others(name, rows):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name and task.doc
    for train in (False, True):
        for ann in rows:
            reason = task.drop_reason(ann, train, ViewOptions())
            assert task.keeps(ann, train) is (reason is None)
            assert reason is None or (isinstance(reason, str) and reason)
    kept = [a for a in rows if task.keeps(a, train=False)]
    assert kept, f"task {name} keeps none of the rows of every kind"
    assert all(task.has_truth(a) for a in kept)  # evaluation never keeps a row without a ground truth


@pytest.mark.parametrize("name", task_names())
def test_prompt_target_and_parse_round_trip(name, rows):
    task = get_task(name)
    for ann in (a for a in rows if task.keeps(a, train=True)):
        sample = task.sample(ann, "clip.mp4")
        assert task.owns(sample) and sample.video_path == "clip.mp4"
        prompt, target = task.prompt(sample), task.target(sample)
        assert prompt.strip() and target.strip()
        if not task.scored:
            assert task.truth(sample) is None and task.accuracy(target, sample) is None
            continue
        truth = task.truth(sample)
        if truth is None:
            continue
        # The reply SFT teaches is a correct answer in the task's own format.
        assert task.parse(target, sample) == truth
        assert task.accuracy(target, sample) == 1.0
        assert task.accuracy("", sample) == 0.0 and task.parse("", sample) is None


@pytest.mark.parametrize("name", [n for n in task_names() if get_task(n).scored])
def test_default_rewards_prefer_the_target_and_never_raise(name, rows):
    task = get_task(name)
    rewards = build_rewards(dict(task.default_rewards))
    samples = [task.sample(a) for a in rows if task.keeps(a, train=False)]
    junk = ["", "<answer>", "A or B", "[-1, -1]", "\x00" * 5, "<think></think><answer></answer>"]
    for sample in samples:
        target = task.target(sample)
        result = rewards([target, *junk], [sample] * (1 + len(junk)))
        totals = result.total.tolist()
        assert all(math.isfinite(t) for t in totals)
        assert totals[0] == max(totals) and totals[0] > min(totals)
        assert result.per_reward[next(iter(task.default_rewards))][0] == 1.0  # the format reward


@pytest.mark.parametrize("name", task_names())
def test_metrics_score_targets_perfectly_and_other_tasks_not_at_all(name, rows):
    task = get_task(name)
    samples = [task.sample(a) for a in rows if task.keeps(a, train=False)]
    other = next(get_task(n) for n in task_names() if n != name)
    foreign = [other.sample(a) for a in rows if other.keeps(a, train=False)]
    metrics = task_metrics(task)
    assert "format_rate" in metrics
    for metric in metrics.values():
        metric.update([task.target(s) for s in samples] + ["x"] * len(foreign), samples + foreign)
    for key, metric in metrics.items():
        value = float(metric.compute())
        if key == "format_rate":  # one rate over every reply of a view: the foreign "x" replies count as wrong
            assert metric.hits == (len(samples) if task.format_tags else 0)
            continue
        if metric.higher_is_better is None:  # a rate with no best value (a reflect task's wrong -> right share)
            continue
        if math.isnan(value):  # rows these samples lack (the evaluation view of TAG has no normal clip)
            assert metric.total == 0, key
        else:
            assert value == (0.0 if metric.higher_is_better is False else 1.0), key
    if task.scored:
        assert any(k != "format_rate" for k in metrics), f"a scored task ({name}) reports an accuracy metric"


def test_cls_binary_has_an_accuracy_reward_and_a_binary_metric(rows):
    task = get_task("cls_binary")
    samples = [task.sample(a) for a in rows if task.keeps(a, train=False)]
    replies = ["<think>x</think><answer>Anomaly</answer>"] * len(samples)
    truth = [task.truth(s) for s in samples]
    assert True in truth and False in truth
    for reward in ("accuracy", "class_match"):
        values = build_rewards({reward: {"weight": 1.0}})(replies, samples).per_reward[reward]
        assert values == [float(t) for t in truth]
    metric = task_metrics("cls_binary")["cls_binary_accuracy"]
    metric.update(replies, samples)
    assert float(metric.compute()) == pytest.approx(sum(truth) / len(truth))


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown task 'qaa'.*Did you mean 'qa'"):
        get_task("qaa")


def test_a_sample_of_an_unloaded_task_gets_no_reward_instead_of_an_error():
    from vau.tasks import Sample

    sample = Sample(task="not_loaded", video="v.mp4", answer="A")
    names = ["accuracy", "choice_accuracy", "class_match", "temporal_iou", "format"]
    result = build_rewards({n: {"weight": 1.0} for n in names})(["<answer>A</answer>"], [sample])
    assert all(v == [None] for v in result.per_reward.values())

