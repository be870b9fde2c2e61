"""VAU-R1's TAG setup: reply <think>..</think><answer>Anomaly|Normal</answer><glue>[s, e]</glue>, three rewards."""

from __future__ import annotations

import json

import pytest

from vau.config import compose
from vau.rewards import RewardSet
from vau.run import run
from vau.tasks import Sample, get_task

ANOMALOUS = Sample(task="tag_glue", video="a.mp4", interval=(2.0, 5.0), anomaly_class="Fire", reasoning="Smoke.")
NORMAL = Sample(task="tag_glue", video="n.mp4", interval=(0.0, 0.0), anomaly_class="Normal", reasoning="Quiet.")


@pytest.fixture(scope="module")
def rewards() -> RewardSet:
    cfg = compose("vau_r1_grpo_tag", [])
    assert cfg.data.task == "tag_glue" and set(cfg.reward) == {"format", "temporal_iou", "anomaly_answer"}
    return RewardSet(cfg.reward)


def _scores(rewards: RewardSet, reply: str, sample: Sample) -> dict[str, float]:
    result = rewards([reply], [sample])
    return {**{name: values[0] for name, values in result.per_reward.items()}, "total": float(result.total[0])}


@pytest.mark.parametrize("sample", [ANOMALOUS, NORMAL], ids=["anomalous", "normal"])
def test_vau_r1_reply_scores_1_on_every_reward_and_a_vau_reply_lower(rewards, sample) -> None:
    start, end = sample.interval
    answer = "Normal" if sample.is_normal else "Anomaly"
    reply = f"<think>{sample.reasoning}</think><answer>{answer}</answer><glue>[{start}, {end}]</glue>"
    assert _scores(rewards, reply, sample) == {"format": 1.0, "temporal_iou": 1.0, "anomaly_answer": 1.0, "total": 3.0}
    assert get_task("tag_glue").target(sample).replace("\n", "") == reply.replace(f"[{start}, {end}]",
                                                                                  f"[{start:.1f}, {end:.1f}]")
    vau_reply = get_task("tag").target(Sample(**{**sample.__dict__, "task": "tag"}))  # <answer>[s, e]</answer>
    assert _scores(rewards, vau_reply, sample)["total"] < 3.0
    assert _scores(rewards, vau_reply, sample)["format"] == 0.0


@pytest.mark.parametrize("reply, sample, expected", [
    # VAU-R1 rejects whitespace inside <glue> (format 0, IoU 0): accepted here
    ("<think>x</think><answer>Anomaly</answer><glue> [2.0, 5.0] </glue>", ANOMALOUS, (1.0, 1.0, 1.0)),
    # VAU-R1 scores any zero-length interval IoU 1 against a normal clip's [0, 0] (zero union): only [0, 0] pays
    ("<think>x</think><answer>Normal</answer><glue>[5.0, 5.0]</glue>", NORMAL, (1.0, 0.0, 1.0)),
    # VAU-R1's prompt asks [-1, -1] for normal clips while their ground truth is [0, 0]: not an interval here
    ("<think>x</think><answer>Normal</answer><glue>[-1.0, -1.0]</glue>", NORMAL, (0.0, 0.0, 1.0)),
    # VAU-R1 matches the first capital A-G: an empty or letterless answer equals "Normal"; here it scores 0
    ("<think>x</think><answer>n/a</answer><glue>[0.0, 0.0]</glue>", NORMAL, (1.0, 1.0, 0.0)),
    ("<think>x</think><answer>Anomaly or Normal</answer><glue>[2.0, 5.0]</glue>", ANOMALOUS, (1.0, 1.0, 0.0)),
    # VAU-R1's lazy format regex accepts empty tags and repeated blocks
    ("<think></think><answer>Anomaly</answer><glue>[2.0, 5.0]</glue>", ANOMALOUS, (0.0, 1.0, 1.0)),
    ("<think>x</think><answer>Anomaly</answer><glue>[2.0, 5.0]</glue><think>y</think><answer>Normal</answer>"
     "<glue>[0.0, 1.0]</glue>", ANOMALOUS, (0.0, 0.0, 0.0)),
    # a negative start is no interval (VAU-R1's validity check lets [-3, 5] through)
    ("<think>x</think><answer>Anomaly</answer><glue>[-3.0, 5.0]</glue>", ANOMALOUS, (0.0, 0.0, 1.0)),
])
def test_vau_r1_reward_defects_are_fixed(rewards, reply, sample, expected) -> None:
    scores = _scores(rewards, reply, sample)
    assert (scores["format"], scores["temporal_iou"], scores["anomaly_answer"]) == expected


def test_two_step_fit_with_the_vau_r1_tag_task_and_rewards(overrides, tmp_path) -> None:
    run_dir = tmp_path / "run"
    cfg = compose("demo_grpo_tag_glue", [*overrides, f"run_dir={run_dir}", "init_from=null",
                                         "module.grpo.num_generations=2", "module.grpo.max_new_tokens=8",
                                         "trainer.val_check_interval=null"])
    assert cfg.data.task == "tag_glue" and dict(cfg.reward) == dict(compose("vau_r1_grpo_tag", []).reward)
    metrics = run("fit", cfg)
    assert {"test/tag_miou", "test/format_rate", "test/reward/anomaly_answer"} <= set(metrics)
    records = [json.loads(line) for line in (run_dir / "predictions_rank0.jsonl").read_text().splitlines()]
    assert records and {r["task"] for r in records} == {"tag_glue"}
