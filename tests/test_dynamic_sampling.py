"""Dynamic sampling (``module.grpo.dynamic_sampling``): groups without reward spread are replaced by groups of further
prompts; the loss of a step made of several rollouts equals that of one batch of the kept groups; exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vau.config import compose
from vau.modules.dynamic_sampling import group_spread, part_weights, take_groups
from vau.modules.grpo_loss import LOSS_TYPES, policy_loss
from vau.rewards import RewardResult
from vau.run import run

from .test_distributed import EVEN_SPREAD, _fit
from .test_resume import checkpoint, fit, scalars

# 0/1 within the group of an even-numbered clip, 0.5 for an odd one (no spread); registered by test_distributed
REWARD = EVEN_SPREAD

DS = ["module=grpo", "reward.format.weight=0", "reward.choice_accuracy.weight=0", f"+reward.{REWARD}={{weight:1.0}}",
      "module.grpo.num_generations=2",
      "module.grpo.max_new_tokens=4", "module.grpo.beta=0.1", "module.optim.lr=1e-3",
      "module.grpo.dynamic_sampling.enabled=true", "module.grpo.dynamic_sampling.max_extra_batches=3",
      "test_after_fit=false", "trainer.limit_val_batches=0"]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_parts_weighted_give_the_loss_of_one_batch_of_the_kept_groups(loss_type):
    """Two rollouts, some groups dropped from each: the weighted sum of their losses (and its gradient) equals the loss
    of one batch holding only the kept groups."""
    g = torch.Generator().manual_seed(0)
    G, T = 2, 5
    parts = []
    for groups, kept in ((3, [True, False, True]), (2, [False, True])):
        n = groups * G
        logps = torch.randn(n, T, generator=g, requires_grad=True)
        old = (logps + 0.1 * torch.randn(n, T, generator=g)).detach()
        mask = (torch.rand(n, T, generator=g) > 0.2).float()
        mask[:, 0] = 1.0
        adv = torch.randn(n, generator=g)
        rows = torch.tensor(kept).repeat_interleave(G).float().unsqueeze(1)
        parts.append((logps, old, adv, mask * rows, torch.tensor(kept)))
    kept_tokens = [float(p[3].sum()) for p in parts]
    weights = part_weights(loss_type, [p[0].shape[0] for p in parts], [int(p[4].sum()) * G for p in parts],
                           kept_tokens)
    num_items = torch.tensor(sum(kept_tokens))
    total = sum(w * policy_loss(lp, old, adv, mask, loss_type=loss_type, max_completion_length=T,
                                num_items=num_items)[0] for (lp, old, adv, mask, _), w in zip(parts, weights))
    total.backward()
    chunked = [p[0].grad.clone() for p in parts]

    # the same kept rows as one batch
    rows = [torch.nonzero(p[4].repeat_interleave(G)).flatten() for p in parts]
    leaves = [p[0].detach().clone().requires_grad_(True) for p in parts]
    joined = policy_loss(torch.cat([leaf[r] for leaf, r in zip(leaves, rows)]),
                         torch.cat([p[1][r] for p, r in zip(parts, rows)]),
                         torch.cat([p[2][r] for p, r in zip(parts, rows)]),
                         torch.cat([p[3][r] for p, r in zip(parts, rows)]), loss_type=loss_type,
                         max_completion_length=T, num_items=num_items)[0]
    joined.backward()
    assert float(total.detach()) == pytest.approx(float(joined.detach()), rel=1e-6)
    for grad, leaf in zip(chunked, leaves):
        assert torch.allclose(grad, leaf.grad, atol=1e-7)


def test_spread_is_read_from_the_chosen_reward_and_groups_taken_in_order():
    result = RewardResult(torch.tensor([1.0, 1.0, 0.0, 2.0, 3.0, 3.0]), {"acc": [1.0, 0.0, 1.0, 1.0, None, 1.0]},
                          skipped=torch.tensor([False, False, False, False, False, False]))
    assert group_spread(result, "total", 2).tolist() == [False, True, False]
    assert group_spread(result, "acc", 2).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="dynamic_sampling.metric='nope'"):
        group_spread(result, "nope", 2)
    assert take_groups(torch.tensor([True, True, True]), 0).tolist() == [False, False, False]


def test_refill_keeps_a_full_step_of_groups_with_spread(overrides, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose("demo", [*overrides, *DS, f"run_dir={run_dir}", "trainer.max_steps=4"])
    assert cfg.data.batch_size == 2
    run("fit", cfg)
    kept = scalars(run_dir, "train/dynamic_sampling/kept_groups")
    extra = scalars(run_dir, "train/dynamic_sampling/extra_batches")
    dropped = scalars(run_dir, "train/dynamic_sampling/dropped_groups")
    assert len(kept) == 4
    for step in kept:
        # full (2 groups with spread), or the extra budget was spent trying
        assert kept[step] == 2 or extra[step] == 3
        assert 0 <= extra[step] <= 3
        # every rolled-out group is kept or dropped: 2 per batch
        assert kept[step] + dropped[step] == 2 * (1 + extra[step])
    assert any(extra[s] > 0 for s in extra) and any(dropped[s] > 0 for s in dropped)
    # the rewards of the kept groups have spread: the mean of a kept group is 0.5 as of the dropped ones, so the
    # logged reward mean over everything rolled out stays 0.5
    assert all(v == pytest.approx(0.5) for v in scalars(run_dir, "train/reward").values())


def _watch_parts(module, parts: list) -> None:
    """Record (optimiser step, prompts, groups with spread) of every part (rollout + rewards) of a GRPO step."""
    original = module.part

    def part(batch, contrast=False):
        out = original(batch, contrast)
        parts.append((int(module.global_step), int(batch["size"]), int(group_spread(out.rewards, "total", 2).sum())))
        return out

    module.part = part


@pytest.mark.parametrize("mode", ["batch", "missing"])
def test_refills_roll_out_a_batch_or_only_the_missing_groups(tmp_path, cache_dir, demo_root, mode):
    """``refill: batch`` rolls out data.batch_size (2) more prompts while a step is short of groups with spread;
    ``refill: missing`` only as many as are missing, within the same budget of 3 x 2 prompts. Either way a step ends
    full or with its budget spent, and the logs count every prompt rolled out."""
    overrides = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
                 f"paths.output_dir={tmp_path / 'outputs'}", "trainer.enable_progress_bar=false",
                 "trainer.log_every_n_steps=1", "data.batch_size=2", *DS, "trainer.max_steps=4",
                 f"module.grpo.dynamic_sampling.refill={mode}"]
    parts: list = []
    _fit(overrides, tmp_path / "run", patch=lambda m: _watch_parts(m, parts))
    logged = scalars(tmp_path / "run", "train/dynamic_sampling/extra_prompts")
    assert sorted(logged) == [0, 1, 2, 3]
    shorts = 0
    for step in range(4):
        sizes = [(size, spread) for s, size, spread in parts if s == step]
        assert sizes[0][0] == 2
        kept, spent = min(sizes[0][1], 2), 0
        for size, spread in sizes[1:]:
            shorts += kept == 1
            assert size == (2 if mode == "batch" else min(2 - kept, 6 - spent)), (step, sizes)
            kept, spent = kept + min(spread, 2 - kept), spent + size
        assert kept == 2 or spent == 6, (step, sizes)
        assert logged[step] == spent
    assert shorts, "no step was one group short: nothing told the two modes apart"


def test_an_unknown_refill_is_refused(overrides, tmp_path):
    cfg = compose("demo", [*overrides, *DS, f"run_dir={tmp_path}", "module.grpo.dynamic_sampling.refill=some"])
    with pytest.raises(ValueError, match="dynamic_sampling.refill='some'"):
        run("fit", cfg)


def test_metric_must_be_a_configured_reward(overrides, tmp_path):
    cfg = compose("demo", [*overrides, *DS, f"run_dir={tmp_path}", "trainer.max_steps=1",
                           "module.grpo.dynamic_sampling.metric=nope"])
    with pytest.raises(ValueError, match="dynamic_sampling.metric='nope'.*test_spread_on_even_videos"):
        run("fit", cfg)


def test_resume_after_refills_repeats_the_run(cache_dir, demo_root, tmp_path):
    """The extra prompts of a step come from a stream seeded by the step: a run resumed from step 1 draws the same
    ones and logs the same losses and kept groups as the run that was never stopped."""
    overrides = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
                 f"paths.output_dir={tmp_path / 'outputs'}", "trainer.enable_progress_bar=false",
                 "trainer.log_every_n_steps=1", "data.batch_size=2", *DS, "trainer.max_steps=3",
                 "trainer.max_epochs=-1", "checkpoint.every_n_train_steps=1", "checkpoint.save_top_k=-1"]
    losses = fit(overrides, tmp_path / "a")
    extra = scalars(tmp_path / "a", "train/dynamic_sampling/extra_batches")
    assert any(extra.values())  # refills happened
    resumed = fit(overrides, tmp_path / "b", ckpt=checkpoint(tmp_path / "a", 1))
    assert len(resumed) == 2 and resumed == {s: v for s, v in losses.items() if s in resumed}
    assert scalars(tmp_path / "b", "train/dynamic_sampling/kept_groups") == {
        s: v for s, v in scalars(tmp_path / "a", "train/dynamic_sampling/kept_groups").items() if s in resumed}


def test_a_step_without_any_group_with_spread_finishes(overrides, tmp_path):
    """Late in a run every group can agree (all right): the extra budget is spent, nothing is kept, the loss is 0 and
    the run goes on (it once divided by the zero total weight)."""
    run_dir = tmp_path / "run"
    # the format reward: the untrained tiny model never writes the format, so no group has spread in it
    cfg = compose("demo", [*overrides, *DS, f"run_dir={run_dir}", "trainer.max_steps=2",
                           "module.grpo.dynamic_sampling.metric=format"])
    run("fit", cfg)
    assert set(scalars(run_dir, "train/dynamic_sampling/kept_groups").values()) == {0.0}
    assert set(scalars(run_dir, "train/dynamic_sampling/extra_batches").values()) == {3.0}
    assert all(v == 0.0 for v in scalars(run_dir, "train/loss").values())


def test_settled_rows_are_skipped_with_a_probability_that_grows_and_come_back():
    from vau.modules.dynamic_sampling import SpreadHistory

    history = SpreadHistory(revisit=0.5)
    history.observe([1, 2, 3], torch.tensor([False, False, True]))
    history.observe([1], torch.tensor([False]))
    assert (history.settled(1), history.settled(2), history.settled(3), history.settled(9)) == (2, 1, 0, 0)
    rng = np.random.default_rng(0)
    rate = {row: sum(history.skips(row, rng) for _ in range(4000)) / 4000 for row in (1, 2, 3)}
    assert rate[3] == 0.0 and abs(rate[2] - 0.5) < 0.04 and abs(rate[1] - 0.75) < 0.04  # 1 - revisit ** runs
    history.observe([1], torch.tensor([True]))  # spread again: no longer settled
    assert history.settled(1) == 0
    copy = SpreadHistory(0.5)
    copy.load_state_dict(history.state_dict())
    assert copy.runs == history.runs
    with pytest.raises(ValueError, match="revisit=2"):
        SpreadHistory(2)


SKIP = ["module.grpo.dynamic_sampling.skip_settled=true", "module.grpo.dynamic_sampling.revisit=0.0",
        "data.batch_size=4", "trainer.max_steps=6", "trainer.max_epochs=-1"]


def test_skipping_settled_rows_spends_fewer_rollouts(overrides, tmp_path):
    """Odd-numbered clips never have spread under the test reward: once seen, they are skipped before their rollout
    (revisit 0), so the steps need fewer extra batches than plain dynamic sampling for the same kept groups."""
    extra = {}
    for name, more in (("plain", SKIP[2:]), ("skip", SKIP)):
        run_dir = tmp_path / name
        run("fit", compose("demo", [*overrides, *DS, f"run_dir={run_dir}", *more]))
        extra[name] = sum(scalars(run_dir, "train/dynamic_sampling/extra_batches").values())
        if name == "skip":
            assert sum(scalars(run_dir, "train/dynamic_sampling/skipped_prompts").values()) > 0
            kept = scalars(run_dir, "train/dynamic_sampling/kept_fraction")
            assert len(kept) == 6 and min(kept.values()) > 0
    assert extra["skip"] < extra["plain"]


def test_resume_with_skipping_repeats_the_run(cache_dir, demo_root, tmp_path):
    """The skip history is saved in the checkpoint: a run resumed from step 2 skips the same rows."""
    overrides = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
                 f"paths.output_dir={tmp_path / 'outputs'}", "trainer.enable_progress_bar=false",
                 "trainer.log_every_n_steps=1", *DS, *SKIP[:3], "trainer.max_steps=4", "trainer.max_epochs=-1",
                 "checkpoint.every_n_train_steps=1", "checkpoint.save_top_k=-1"]
    losses = fit(overrides, tmp_path / "a")
    skipped = scalars(tmp_path / "a", "train/dynamic_sampling/skipped_prompts")
    assert sum(skipped.values()) > 0
    resumed = fit(overrides, tmp_path / "b", ckpt=checkpoint(tmp_path / "a", 2))
    assert len(resumed) == 2 and resumed == {s: v for s, v in losses.items() if s in resumed}
    assert scalars(tmp_path / "b", "train/dynamic_sampling/skipped_prompts") == {
        s: v for s, v in skipped.items() if s in resumed}
