"""Reward plugins: the registry is the test matrix (every reward fuzzed against its documented range), plus the
exact values and reward-hack cases of each family and the example plugin's config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plugins.brevity  # noqa: F401  (registers the example plugin so the matrix covers it)
import vau.rewards  # noqa: F401  (registers the built-ins)
from vau.registry import REWARDS, first_doc_line
from vau.rewards import RewardSet, build_rewards
from vau.tasks import Sample

OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight starts", "Someone steals a bag")
QA = Sample(task="qa", video="q.mp4", question="What happens?", options=OPTIONS, answer="B", interval=(2.0, 6.0),
            anomaly_class="Fire")
TAG = Sample(task="tag", video="t.mp4", interval=(4.0, 8.0), anomaly_class="Fire", answer="B", options=OPTIONS)
TAG_NORMAL = Sample(task="tag", video="n.mp4", interval=(0.0, 0.0), anomaly_class="Normal")
TAG_UNKNOWN = Sample(task="tag", video="u.mp4", interval=None, anomaly_class="Fire")
TAG_MINUS_ONE = Sample(task="tag", video="m.mp4", interval=(-1.0, -1.0), anomaly_class="Fire")
CLS = Sample(task="cls", video="c.mp4", anomaly_class="People_falling", interval=(1.0, 2.0))
CLS_NORMAL = Sample(task="cls", video="cn.mp4", anomaly_class="Normal")
CLS_UNLISTED = Sample(task="cls", video="cu.mp4", anomaly_class="Food Safety")
DESCRIBE = Sample(task="describe", video="d.mp4", description="A fire.", anomaly_class="Fire")
ALL_SAMPLES = [QA, TAG, TAG_NORMAL, TAG_UNKNOWN, TAG_MINUS_ONE, CLS, CLS_NORMAL, CLS_UNLISTED, DESCRIBE,
               Sample(task="no_such_task", video="x.mp4")]

FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "<glue>", "</glue>", "<reflect>", "</reflect>", "[",
             "]", ",", " - ", " to ", "from ", ":", "-1", "0", "0.0", "4", "8.0", "12:30", "9" * 40, "1e309", "nan",
             "A", "B", "C", "D", "a", " or ", "The answer is ", "Normal", "Fire", "People_falling", "Food Safety",
             "no anomaly", "yes", " ", "\n", "\u0663", "\x00", " seconds"]
any_text = st.one_of(st.text(max_size=200), st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join))
junk = st.one_of(st.none(), st.integers(-10, 10**6), st.floats(), st.text(max_size=3))
# extra entries per reward: arguments a config may pass (the matrix covers each)
VARIANTS = {"class_match": [{}, {"binary": True}], "overlong_penalty": [{}, {"buffer": 3}],
            "brevity": [{}, {"target_chars": 1}]}


def _documented_range(name: str) -> tuple[float, float]:
    match = re.search(r"range \[(-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?)\]", first_doc_line(REWARDS.get(name)))
    assert match, f"reward {name!r}: the first docstring line must state its range as 'range [lo, hi]'"
    return float(match.group(1)), float(match.group(2))


def _call(name: str, completions, samples, config=None, **ctx):
    rewards = RewardSet({name: {"weight": 1.0, **(config or {})}})
    return rewards.functions[name](completions, samples, **ctx)


MATRIX = [(name, config) for name in REWARDS.names() for config in VARIANTS.get(name, [{}])]


def test_matrix_holds_the_builtins_and_the_plugin():
    assert {"format", "format_lenient", "choice_accuracy", "class_match", "temporal_iou", "temporal_iou_normalized",
            "overlong_penalty", "brevity"} <= set(REWARDS.names())


@pytest.mark.parametrize("name", REWARDS.names())
def test_every_reward_documents_a_bounded_range(name):
    low, high = _documented_range(name)
    assert low < high


@pytest.mark.parametrize("name, config", MATRIX)
@settings(max_examples=120, deadline=None)
@given(texts=st.lists(any_text, min_size=1, max_size=4), picks=st.lists(st.sampled_from(ALL_SAMPLES), min_size=4,
       max_size=4), lengths=st.lists(junk, max_size=4), limit=junk, durations=st.one_of(st.none(), st.lists(junk)))
def test_every_reward_stays_in_range_and_never_raises(name, config, texts, picks, lengths, limit, durations):
    low, high = _documented_range(name)
    samples = picks[: len(texts)]
    values = _call(name, texts, samples, config, completion_lengths=lengths, max_new_tokens=limit,
                   durations=durations)
    assert len(values) == len(texts)
    for value in values:
        assert value is None or (isinstance(value, float) and low <= value <= high), (name, value)


@pytest.mark.parametrize("name, config", MATRIX)
def test_every_reward_handles_an_empty_batch_and_no_ctx(name, config):
    assert list(_call(name, [], [], config)) == []
    values = _call(name, ["<think>x</think><answer>B</answer>"], [QA], config)
    assert len(values) == 1


# ------------------------------------------------------------------------------------------------ format ----
def test_format_strict_and_lenient():
    good, blank, loose = "<think>x</think><answer>B</answer>", "<think>x</think><answer></answer>", "B <answer>B</answer>"
    assert _call("format", [good, blank, loose, "B"], [QA] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert _call("format_lenient", [good, blank, loose, "B"], [QA] * 4) == [1.0, 0.5, 0.5, 0.0]
    assert _call("format", [good], [DESCRIBE]) == [None]


# ---------------------------------------------------------------------------------------------- accuracy ----
@pytest.mark.parametrize("reply, expected", [
    ("<think>fire</think><answer>B</answer>", 1.0), ("The answer is (B)", 1.0), ("a fire breaks out", 1.0),
    ("<answer>A</answer>", 0.0), ("<answer></answer>", 0.0), ("<answer>A or B or C</answer>", 0.0),
    ("A B C D", 0.0), ("<answer>a</answer>", 0.0), ("", 0.0),
])
def test_choice_accuracy_and_its_hacks(reply, expected):
    assert _call("choice_accuracy", [reply], [QA]) == [expected]


def test_choice_accuracy_does_not_apply_outside_qa():
    assert _call("choice_accuracy", ["B", "B"], [TAG, CLS]) == [None, None]


@pytest.mark.parametrize("reply, sample, twenty_way, binary", [
    ("<answer>people falling</answer>", CLS, 1.0, 1.0), ("Fire", CLS, 0.0, 1.0), ("Normal", CLS, 0.0, 0.0),
    ("Absence_of_anomaly", CLS_NORMAL, 1.0, 1.0), ("Fire", CLS_NORMAL, 0.0, 0.0), ("Fire or Normal", CLS, 0.0, 0.0),
    ("food_safety", CLS_UNLISTED, 1.0, 1.0), ("", CLS, 0.0, 0.0),
])
def test_class_match_twenty_way_and_binary(reply, sample, twenty_way, binary):
    assert _call("class_match", [reply], [sample]) == [twenty_way]
    assert _call("class_match", [reply], [sample], {"binary": True}) == [binary]


def test_class_match_does_not_apply_outside_cls():
    assert _call("class_match", ["Fire"], [QA]) == [None]


# ---------------------------------------------------------------------------------------------- temporal ----
def test_temporal_iou_values_and_normal_clip_convention():
    replies = ["<answer>[2.0, 6.0]</answer>", "<answer>[4, 8]</answer>", "<answer>[0.0, 0.0]</answer>", "garbage"]
    assert _call("temporal_iou", replies, [TAG] * 4) == pytest.approx([1 / 3, 1.0, 0.0, 0.0])
    assert _call("temporal_iou", replies, [TAG_NORMAL] * 4) == [0.0, 0.0, 1.0, 0.0]
    assert _call("temporal_iou", ["[-1, -1]"], [TAG_NORMAL]) == [0.0]  # VAU-R1's old prompt answer earns nothing


def test_temporal_rewards_skip_unknown_truth_and_other_tasks():
    for name in ("temporal_iou", "temporal_iou_normalized"):
        values = _call(name, ["[-1, -1]", "[0, 0]", "[4, 8]", "[4, 8]"], [TAG_UNKNOWN, TAG_MINUS_ONE, QA, CLS],
                       durations=[10.0] * 4)
        assert values == [None, None, None, None]


def test_temporal_iou_normalized_formula_and_duration_sources():
    reply = "<answer>[2.0, 6.0]</answer>"  # IoU 1/3, |ds| = |de| = 2
    expected = (1 / 3) * (1 - 2 / 20) * (1 - 2 / 20)
    assert _call("temporal_iou_normalized", [reply], [TAG], durations=[20.0]) == pytest.approx([expected])
    with_extra = Sample(task="tag", video="t.mp4", interval=(4.0, 8.0), extra={"duration": 20.0})
    assert _call("temporal_iou_normalized", [reply], [with_extra]) == pytest.approx([expected])
    assert _call("temporal_iou_normalized", [reply], [TAG]) == [None]  # no duration anywhere
    assert _call("temporal_iou_normalized", ["[0, 0]", "[1, 2]"], [TAG_NORMAL] * 2) == [1.0, 0.0]
    assert _call("temporal_iou_normalized", ["[4, 8]"], [TAG], durations=[20.0]) == [1.0]


# ------------------------------------------------------------------------------------------------ length ----
def test_overlong_penalty_ramp():
    values = _call("overlong_penalty", ["x"] * 5, [QA] * 5, {"buffer": 4}, completion_lengths=[3, 6, 8, 10, 12],
                   max_new_tokens=10)
    assert values == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    assert _call("overlong_penalty", ["x"], [QA]) == [None]


# ---------------------------------------------------------------------------------------- plugin and set ----
def test_brevity_plugin_rewards_short_replies():
    assert _call("brevity", ["x" * 10, "x" * 150, "x" * 300], [QA] * 3, {"target_chars": 100}) == [1.0, 0.5, 0.0]


def test_reward_set_weights_and_none_contributes_zero():
    rewards = build_rewards({"choice_accuracy": {"weight": 2.0}, "temporal_iou": {"weight": 0.5}})
    result = rewards(["<answer>B</answer>", "<answer>[4, 8]</answer>"], [QA, TAG])
    assert result.total.tolist() == pytest.approx([2.0, 0.5])
    assert result.per_reward == {"choice_accuracy": [1.0, None], "temporal_iou": [None, 1.0]}


def test_brevity_experiment_config_composes_and_builds():
    from vau.config import compose
    from vau.registry import load_plugins

    path = Path(__file__).resolve().parent.parent / "plugins" / "brevity.yaml"
    cfg = compose(str(path))
    assert cfg.experiment_name == "brevity_demo" and list(cfg.plugins) == ["plugins.brevity"]
    assert load_plugins(cfg.plugins, use_entry_points=False) == ["plugins.brevity"]
    rewards = build_rewards(dict(cfg.reward))
    assert set(rewards.functions) == {"format", "choice_accuracy", "brevity"}
    assert rewards.weights["brevity"] == pytest.approx(0.1)
    assert path.read_text().splitlines()[0] == "# @package _global_"
