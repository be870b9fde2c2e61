"""T-GRPO (``module.grpo.temporal_contrast``) and shuffled frames (``data.frames_order``, ``predict frames_order=``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vau.cli import main
from vau.config import compose
from vau.datamodules.video import DecodedClip, shuffle_frames
from vau.modules.temporal_contrast import BONUS, is_contrast_step, temporal_bonus, with_bonus
from vau.rewards import RewardResult
from vau.run import run

from .test_distributed import EVEN_SPREAD
from .test_resume import scalars


def test_the_bonus_is_judged_per_group_not_per_batch():
    """Group 1: order helps (1/2 right ordered, 0/2 shuffled); group 2: order hurts (1/2 vs 2/2). Over the batch the
    accuracies are 2/4 vs 2/4, which Video-R1's batch rule reads as "helped" for both; per group only group 1 is."""
    ordered = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    shuffled = torch.tensor([0, 0, 1, 1], dtype=torch.bool)
    bonus, p, q, helped = temporal_bonus(ordered, shuffled, 2, alpha=0.3, mu=0.8)
    assert p.tolist() == [0.5, 0.5] and q.tolist() == [0.0, 1.0] and helped.tolist() == [True, False]
    assert bonus.tolist() == pytest.approx([0.3, 0.0, 0.0, 0.0])  # right ordered replies of helped groups only
    assert ordered.float().mean() >= 0.8 * shuffled.float().mean()  # the batch rule would have paid both groups
    strict, *_ = temporal_bonus(ordered, ~shuffled, 2, alpha=0.3, mu=2.0)  # p 0.5 vs p~ 1.0 and 0.0
    assert strict.tolist() == pytest.approx([0.0, 0.0, 0.3, 0.0])  # only where 0.5 >= 2 x p~
    with pytest.raises(ValueError, match="do not form groups of 3"):
        temporal_bonus(ordered, shuffled, 3, 0.3, 0.8)


def test_the_bonus_joins_the_rewards_and_skips_left_out_completions():
    rewards = RewardResult(torch.tensor([1.0, 2.0, 0.0]), {"acc": [1.0, 1.0, None]},
                           skipped=torch.tensor([False, True, False]), weights={"acc": 1.0}, turns={"acc": "final"})
    out = with_bonus(rewards, torch.tensor([0.3, 0.3, 0.3]))
    assert out.total.tolist() == pytest.approx([1.3, 2.0, 0.3]) and out.per_reward[BONUS] == pytest.approx([0.3, 0, 0.3])
    assert out.weights[BONUS] == 1.0 and out.turns[BONUS] == "final" and out.per_reward["acc"] == [1.0, 1.0, None]


def test_contrast_steps_are_a_seeded_share():
    steps = [is_contrast_step(3, s, 0.25) for s in range(400)]
    assert steps == [is_contrast_step(3, s, 0.25) for s in range(400)]  # the same after a resume, on every rank
    assert 0.15 < sum(steps) / 400 < 0.35


def test_shuffled_frames_keep_their_timestamps():
    frames = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1).repeat(3, axis=-1)
    clip = DecodedClip(frames, np.arange(0, 16, 2), 4.0, 16)
    for seed in range(20):
        moved = shuffle_frames(clip, np.random.default_rng(seed))
        assert moved.indices.tolist() != clip.indices.tolist()  # never the original order
        assert sorted(moved.indices.tolist()) == clip.indices.tolist()
        assert (moved.frames[:, 0, 0, 0] * 2).tolist() == moved.indices.tolist()  # each frame with its own index
    one = DecodedClip(frames[:1], np.array([5]), 4.0, 16)
    assert shuffle_frames(one, np.random.default_rng(0)).indices.tolist() == [5]


def test_a_shuffled_item_differs_from_the_ordered_one_only_in_frame_order(overrides, tiny_backbone):
    from vau.datamodules.vau_bench import VAUBenchDataModule

    cfg = compose("demo", [*overrides, "data.train_option_order=shuffled", "data.qa_option_check=true"])
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id, seed=0)
    dm.setup("fit")
    train = dm.datasets["train"]
    for key in ((0, 0), (1, 5), (2, 7)):
        ordered, shuffled = train[key], train.item(key, frames_order="shuffled")
        assert ordered["key"] == shuffled["key"] == key
        assert torch.equal(ordered["prompt_ids"], shuffled["prompt_ids"])  # same question, same option order
        assert torch.equal(ordered["target_ids"], shuffled["target_ids"])
        assert sorted(ordered["frame_times"]) == sorted(shuffled["frame_times"]) == ordered["frame_times"]
        assert shuffled["frame_times"] != ordered["frame_times"]
        pixels = "pixel_values_videos"
        assert not torch.equal(ordered["vision"][pixels], shuffled["vision"][pixels])
        assert torch.allclose(ordered["vision"][pixels].sum(), shuffled["vision"][pixels].sum(), rtol=1e-4)
    batch = dm.collate([train[(0, 1)], train[(0, 2)]])
    assert batch["keys"] == [(0, 1), (0, 2)]
    with pytest.raises(ValueError, match="data.frames_order='sideways'"):
        VAUBenchDataModule(compose("demo", [*overrides, "data.frames_order=sideways"]).data, cfg.sampler,
                           tiny_backbone, tiny_backbone.pad_id).setup("fit")


# The test reward as the accuracy that counts: odd clips right in every reply, even clips in every other one, on
# ordered and shuffled frames alike (it reads the clip's name, not its frames): order never helps nor hurts.
TG = ["module=grpo", "reward.format.weight=0", "reward.choice_accuracy.weight=0", f"+reward.{EVEN_SPREAD}={{weight:1.0}}",
      "module.grpo.num_generations=2", "module.grpo.max_new_tokens=4", "module.grpo.temporal_contrast.enabled=true",
      f"module.grpo.temporal_contrast.reward={EVEN_SPREAD}", "test_after_fit=false", "trainer.limit_val_batches=0",
      "trainer.max_steps=3"]


@pytest.mark.parametrize("mu, paid, scale", [(0.8, True, "group"), (1.5, False, "group"), (0.8, True, "none")])
def test_grpo_pays_the_bonus_where_ordered_accuracy_clears_the_margin(overrides, tmp_path, mu, paid, scale):
    run_dir = tmp_path / "run"
    run("fit", compose("demo", [*overrides, *TG, f"run_dir={run_dir}", f"module.grpo.temporal_contrast.mu={mu}",
                                f"module.grpo.scale_rewards={scale}"]))
    ordered = scalars(run_dir, "train/temporal_contrast/ordered_accuracy")
    shuffled = scalars(run_dir, "train/temporal_contrast/shuffled_accuracy")
    helped = scalars(run_dir, "train/temporal_contrast/helped_groups")
    bonus = scalars(run_dir, f"train/reward/{BONUS}")
    assert len(ordered) == 3 and ordered == shuffled  # the shuffled replies were scored, on the same prompts
    for step, accuracy in ordered.items():
        assert helped[step] == (1.0 if paid else 0.0)  # p >= 0.8 p~ in every group; p >= 1.5 p~ in none
        assert bonus[step] == pytest.approx(0.3 * accuracy if paid else 0.0)  # alpha x the right ordered replies
    # The 0/1 accuracy is the only reward: a bonus on its right replies is an affine map of each group's rewards, which
    # group-std advantages (Video-R1's scaling) undo exactly; centred-only advantages grow by 1 + alpha.
    shift = scalars(run_dir, "train/temporal_contrast/advantage_shift")
    assert len(shift) == 3
    if paid and scale == "none":  # |+-0.3 / 2| on each reply of a group with spread (a 0/1 pair), 0 in the others
        spread = {step: 1.0 - v for step, v in scalars(run_dir, "train/zero_std_fraction").items()}
        assert any(spread.values()) and all(shift[s] == pytest.approx(0.15 * spread[s], abs=1e-6) for s in shift)
    else:
        assert all(v == pytest.approx(0.0, abs=1e-4) for v in shift.values())
    assert scalars(run_dir, "train/reward")  # the step went on to its loss


def test_no_contrast_when_the_share_is_zero_and_a_bad_reward_name_is_refused(overrides, tmp_path):
    run_dir = tmp_path / "run"
    run("fit", compose("demo", [*overrides, *TG, f"run_dir={run_dir}", "module.grpo.temporal_contrast.share=0"]))
    assert not scalars(run_dir, "train/temporal_contrast/ordered_accuracy") and scalars(run_dir, "train/loss")
    cfg = compose("demo", [*overrides, *TG, f"run_dir={tmp_path / 'x'}", "module.grpo.temporal_contrast.reward=nope"])
    with pytest.raises(ValueError, match="temporal_contrast.reward='nope'"):
        run("fit", cfg)


def test_predict_with_shuffled_frames_and_no_resume_across_orders(demo_root, cache_dir, tmp_path, capsys):
    common = ["conf=demo", f"annotations={demo_root / 'test.csv'}", "task=qa", f"paths.cache_dir={cache_dir}",
              "data.generate=null", f"data.root={demo_root}", "module.generation.max_new_tokens=4", "data.limit.test=3"]
    ordered, shuffled = tmp_path / "o.jsonl", tmp_path / "s.jsonl"
    assert main(["predict", *common, f"out={ordered}"]) == 0
    assert main(["predict", *common, f"out={shuffled}", "frames_order=shuffled"]) == 0
    times = [[json.loads(line)["frame_times"] for line in p.read_text().splitlines()] for p in (ordered, shuffled)]
    assert len(times[0]) == len(times[1]) >= 3
    for a, b in zip(*times):
        assert sorted(b) == a and b != a  # the same frames, in another order, each with its own time
    capsys.readouterr()
    assert main(["predict", *common, f"out={shuffled}"]) == 2  # an ordered run does not resume a shuffled file
    assert "generation settings" in capsys.readouterr().err
    assert main(["predict", *common, f"out={tmp_path / 'x.jsonl'}", "frames_order=backwards"]) == 2
