"""No reward hacking through reflection: every shipped reflect reward set pays a right first answer at least as much
as a wrong one that is corrected, and pays less for spoiling a right answer than for keeping it.

For R = w_i·s(first) + s(final) + g·[wrong→right] − ℓ·[right→wrong] a right first answer pays at least as much as a
corrected wrong one iff w_i >= g (issue: "reflection rewards that cannot be gamed"). The checks below do not use that
formula: they compose each experiment's config with Hydra, build its real RewardSet and score real replies whose
first and final answers take every outcome (QA: right/wrong; TAG: a grid of IoUs).
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch

from vau.config import choices, compose
from vau.modules.grpo import initial_answer_stats
from vau.rewards import RewardSet
from vau.tasks import Sample, get_task

OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight starts", "A car crashes")
QA = Sample(task="qa_reflect", video="q.mp4", question="What happens?", options=OPTIONS, answer="B",
            anomaly_class="Fire", description="Flames rise.", reasoning="Flames rise, so a fire breaks out.")
TAG = Sample(task="tag_reflect", video="t.mp4", interval=(0.0, 10.0), anomaly_class="Fire")
IOUS = [round(0.1 * k, 1) for k in range(11)]


def reply(first: str, final: str) -> str:
    return (f"<think>I look at the clip.</think><answer>{first}</answer>\n<reflect>I check it against the video."
            f"</reflect>\n<think>I look again.</think><answer>{final}</answer>")


def interval(iou: float) -> str:
    """An interval whose IoU with TAG's truth [0, 10] is ``iou`` (0: one that does not overlap it)."""
    return "[11.0, 14.0]" if iou == 0 else f"[0.0, {10 * iou:.1f}]"


@functools.cache
def composed(name: str):
    """Experiment ``name`` composed once per test session (the lists below read every shipped experiment)."""
    return compose(name)


def reflect_experiments() -> list[str]:
    return [name for name in choices("experiment") if composed(name).data.task.endswith("_reflect")]


def shipped_reward_sets() -> list[tuple[str, str]]:
    """(experiment, task) for every shipped experiment of a reflect task that has a reward set."""
    out = []
    for name in reflect_experiments():
        cfg = composed(name)
        if cfg.get("reward"):
            out.append((name, str(cfg.data.task)))
    return out


def totals(experiment: str, texts: list[str], sample: Sample, **ctx) -> list[float]:
    from omegaconf import OmegaConf

    rewards = RewardSet(OmegaConf.to_container(composed(experiment).reward))
    return rewards(texts, [sample] * len(texts), completion_lengths=[40] * len(texts), max_new_tokens=256,
                   **ctx).total.tolist()


def look_reward_sets() -> list[str]:
    """Every shipped GRPO experiment whose replies may look again (``module.generation.look_again``)."""
    out = []
    for name in choices("experiment"):
        cfg = composed(name)
        if cfg.module.get("name") == "grpo" and cfg.module.generation.get("look_again") and cfg.get("reward"):
            out.append(name)
    return out


def look_reply(first: str, final: str | None) -> str:
    """A reply that answers ``first``; with ``final`` it looks again and answers that after the look."""
    head = f"<think>I look at the clip.</think><answer>{first}</answer>"
    if final is None:
        return head
    return f"{head}<look>[1, 3]</look>\n<reflect>The window shows it.</reflect><think>I look again.</think>" \
           f"<answer>{final}</answer>"


def test_looking_again_is_covered():
    assert "demo_grpo_look" in look_reward_sets()


@pytest.mark.parametrize("experiment", look_reward_sets())
def test_a_right_answer_without_a_look_never_pays_less_than_looking_and_correcting(experiment):
    """Looking again may not be a way to sandbag: a right first answer pays most when it does not look; a look that
    corrects pays more than none, one that spoils a right answer pays less than keeping it, and looking costs."""
    qa = replace(QA, task="qa")
    outcomes = {"right": look_reply("B", None), "wrong": look_reply("C", None),
                "right_look_right": look_reply("B", "B"), "wrong_look_right": look_reply("C", "B"),
                "right_look_wrong": look_reply("B", "C"), "wrong_look_wrong": look_reply("C", "D")}
    frames = [0, 0, 8, 8, 8, 8]
    pay = dict(zip(outcomes, totals(experiment, list(outcomes.values()), qa, looked_frames=frames)))
    assert pay["right"] >= pay["wrong_look_right"], f"{experiment}: looking and correcting pays more: {pay}"
    assert pay["right"] > pay["right_look_right"], f"{experiment}: a look that changes nothing is free: {pay}"
    assert pay["right_look_right"] > pay["right_look_wrong"], f"{experiment}: spoiling a right answer pays: {pay}"
    assert pay["wrong_look_right"] > pay["wrong"], f"{experiment}: a correcting look does not pay: {pay}"
    assert pay["wrong"] >= pay["wrong_look_wrong"], f"{experiment}: a useless look pays: {pay}"


def test_every_reflect_task_is_covered():
    tasks = {task for _, task in shipped_reward_sets()}
    assert {"qa_reflect", "tag_reflect"} <= tasks, tasks
    assert any(name.startswith("srvau_r1_grpo") for name, _ in shipped_reward_sets())


@pytest.mark.parametrize(("experiment", "task"), shipped_reward_sets())
def test_a_right_first_answer_never_pays_less(experiment, task):
    if task == "qa_reflect":
        right_right, wrong_right, right_wrong, wrong_wrong = totals(
            experiment, [reply("B", "B"), reply("C", "B"), reply("B", "C"), reply("C", "D")], QA)
        assert right_right >= wrong_right, f"{experiment}: a corrected wrong first answer pays {wrong_right} > " \
                                           f"{right_right} for a right one"
        assert right_right > right_wrong, f"{experiment}: spoiling a right answer pays as much as keeping it"
        assert wrong_right > wrong_wrong, f"{experiment}: a correction does not pay"
        return
    assert task == "tag_reflect", f"add the outcomes of {task} to this test"
    grid = {(a, b): r for (a, b), r in zip(
        [(a, b) for a in IOUS for b in IOUS],
        totals(experiment, [reply(interval(a), interval(b)) for a in IOUS for b in IOUS], TAG))}
    for final in IOUS:
        for better in IOUS:
            for worse in (w for w in IOUS if w < better):
                assert grid[(better, final)] >= grid[(worse, final)], (
                    f"{experiment}: first IoU {worse} pays {grid[(worse, final)]:.3f} > first IoU {better} "
                    f"({grid[(better, final)]:.3f}) for the same final IoU {final}")
    for first in IOUS:
        for final in (f for f in IOUS if f < first):
            assert grid[(first, first)] > grid[(first, final)], (
                f"{experiment}: moving a first interval of IoU {first} to IoU {final} pays as much as keeping it")


def test_the_rule_catches_the_old_weights():
    """The weights shipped before (initial answer unpaid) pay wrong -> right more than right -> right."""
    old = {"format": {"weight": 1.0}, "choice_accuracy": {"weight": 1.0},
           "self_correction": {"weight": 0.5, "gain": 1.0, "loss": 1.0}, "initial_accuracy": {"weight": 0.0}}
    right_right, wrong_right = RewardSet(old)([reply("B", "B"), reply("C", "B")], [QA, QA]).total.tolist()
    assert wrong_right > right_right
    old_tag = {"format": {"weight": 1.0}, "temporal_iou": {"weight": 1.0}, "iou_gain": {"weight": 0.5}}
    better, worse = RewardSet(old_tag)([reply(interval(0.8), interval(0.9)), reply(interval(0.2), interval(0.9))],
                                       [TAG, TAG]).total.tolist()
    assert worse > better


def test_turns_split_the_total():
    rewards = RewardSet({"choice_accuracy": {"weight": 1.0}, "initial_accuracy": {"weight": 2.0},
                         "self_correction": {"weight": 0.5}})
    result = rewards([reply("C", "B"), reply("B", "B"), reply("B", "C")], [QA] * 3)
    first, final = result.turn_totals()
    assert first.tolist() == [0.0, 2.0, 2.0]
    assert final.tolist() == [1.5, 1.0, -0.5]
    assert torch.equal(first + final, result.total)
    with pytest.raises(ValueError, match="turn"):
        RewardSet({"choice_accuracy": {"turn": "second"}})
    moved = RewardSet({"choice_accuracy": {"weight": 1.0, "turn": "first"}})([reply("C", "B")], [QA])
    assert moved.turn_totals()[0].tolist() == [1.0]


def test_initial_answer_stats_show_a_letter_never_opened_with():
    texts = [reply("C", "B"), reply("D", "B"), reply("B", "B"), "<think>x</think><answer>B</answer>"]
    stats = initial_answer_stats(texts, [QA] * 4)
    assert stats["train/initial_accuracy"] == pytest.approx(1 / 3)  # the reply without reflection has no first answer
    assert stats["train/initial_answer_share/A"] == 0.0
    assert stats["train/initial_answer_share/C"] == pytest.approx(1 / 3)
    assert sum(v for k, v in stats.items() if "share" in k) == pytest.approx(1.0)
    assert initial_answer_stats([reply(interval(0.5), interval(1.0))], [TAG]) == {"train/initial_accuracy": 0.5}
    assert get_task("qa").answer_categories(QA) == ("A", "B", "C", "D")


def test_first_turn_tokens_end_at_the_first_closing_answer(tiny_backbone):
    """The per-turn boundary, on the tiny twin's real tokenizer: the shortest prefix whose text holds ``</answer>``;
    0 for a reply without a first answer before a reflection."""
    from types import SimpleNamespace

    from vau.modules.grpo import GRPOModule, Rollout

    tokenizer = tiny_backbone.processor.tokenizer
    texts = [reply("C", "B"), "<think>x</think><answer>B</answer>", reply("D", "A") + "<|im_end|>"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows])
    rollout = Rollout(prompt={}, completion_ids=ids, mask=mask, truncated=torch.zeros(3, dtype=torch.bool),
                      texts=[tokenizer.decode(r, skip_special_tokens=True) for r in rows], samples=[QA] * 3,
                      durations=[None] * 3)
    counts = GRPOModule.first_turn_tokens(SimpleNamespace(backbone=tiny_backbone), rollout).tolist()
    assert counts[1] == 0
    for row, count in zip((rows[0], rows[2]), (counts[0], counts[2])):
        assert "</answer>" in tokenizer.decode(row[:count])  # the token that ends the tag may hold a newline too
        assert "</answer>" not in tokenizer.decode(row[: count - 1])
