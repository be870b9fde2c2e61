"""NaN/inf never trains silently: non-finite or raising rewards name the reward and the sample; skipped completions
(module.grpo.nonfinite_rewards=skip) stay out of the loss and are counted; a non-finite loss or gradient stops SFT
and GRPO with the global step and the cause."""

from __future__ import annotations

import math

import pytest
import torch

from vau.config import compose
from vau.modules.grpo_loss import group_advantages
from vau.modules.nonfinite import NonFiniteError
from vau.registry import REWARDS
from vau.rewards import RewardError, RewardSet
from vau.run import run
from vau.tasks import Sample

NAN_REWARD, RAISING_REWARD = "test_nan_on_first", "test_raises_on_second"


def nan_on_first(completions: list[str], samples: list, **ctx) -> list[float | None]:
    """1.0 for every completion but the first of each batch, which gets NaN (a buggy reward plugin)."""
    return [math.nan if i == 0 else 1.0 + 0.1 * len(text) for i, text in enumerate(completions)]


def raises_on_second(completions: list[str], samples: list, **ctx) -> list[float | None]:
    """Raises when it meets the second sample's video (a buggy reward plugin)."""
    if any(s.video == "b.mp4" for s in samples):
        raise ZeroDivisionError("division by zero")
    return [0.0] * len(completions)


@pytest.fixture(autouse=True)
def buggy_rewards(monkeypatch):
    """Registered for this file's tests only: the reward matrix of tests/test_rewards.py must not see them."""
    monkeypatch.setitem(REWARDS._entries, NAN_REWARD, nan_on_first)
    monkeypatch.setitem(REWARDS._entries, RAISING_REWARD, raises_on_second)

A = Sample(task="qa", video="a.mp4", answer="A", options=("x", "y", "z", "w"))
B = Sample(task="tag", video="b.mp4", interval=(1.0, 2.0))


def grpo_overrides(overrides, run_dir, *extra):
    return [*overrides, "module=grpo", f"run_dir={run_dir}", "trainer.max_steps=2", "test_after_fit=false",
            "trainer.limit_val_batches=0", "module.grpo.max_new_tokens=4", *extra]


# ------------------------------------------------------------------------------------------------ RewardSet ----
def test_a_nan_reward_is_an_error_naming_the_reward_and_the_sample():
    rewards = RewardSet({"format": {"weight": 1.0}, NAN_REWARD: {"weight": 1.0}})
    with pytest.raises(RewardError, match=rf"{NAN_REWARD}.*nan.*completion 0 of 2.*video 'a.mp4' \(task qa\)"):
        rewards(["<answer>A</answer>", "x"], [A, B])


@pytest.mark.parametrize("value", [math.inf, -math.inf, "abc"])
def test_inf_and_non_numbers_are_errors_too(value, monkeypatch):
    monkeypatch.setitem(REWARDS._entries, "test_constant_bad", lambda completions, samples, **ctx: [value] * len(completions))
    with pytest.raises(RewardError, match=r"test_constant_bad.*video 'a.mp4'"):
        RewardSet({"test_constant_bad": {}})(["x"], [A])


def test_a_raising_reward_names_the_reward_and_the_sample_it_failed_on():
    with pytest.raises(RewardError, match=rf"{RAISING_REWARD}.*ZeroDivisionError.*completion 1 of 2, "
                                          rf"video 'b.mp4' \(task tag\)") as info:
        RewardSet({RAISING_REWARD: {}})(["x", "y"], [A, B])
    assert isinstance(info.value.__cause__, ZeroDivisionError)  # the plugin's own traceback is kept


def test_skip_leaves_the_completion_out_of_total_and_means():
    result = RewardSet({NAN_REWARD: {"weight": 1.0}})(["a", "bb", "c"], [A, B, A], nonfinite="skip")
    assert result.skipped.tolist() == [True, False, False] and result.num_skipped == 1
    assert result.per_reward[NAN_REWARD][0] is None and torch.isfinite(result.total).all()
    assert result.means()["total"] == pytest.approx((1.2 + 1.1) / 2)


def test_masked_group_advantages_ignore_left_out_completions():
    rewards = torch.tensor([math.nan, 1.0, 3.0, 2.0, 2.0, 5.0])
    valid = torch.tensor([False, True, True, True, True, False])
    adv, zero_std = group_advantages(rewards, 3, "group", eps=0.0, valid=valid)
    # group 1: {1, 3} -> mean 2, std sqrt(2); group 2: {2, 2} -> equal rewards, no signal
    expected = torch.tensor([0.0, -1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected)
    assert zero_std.tolist() == [False, True]
    # all valid: exactly the unmasked computation
    full = torch.tensor([0.0, 1.0, 3.0, 2.0, 2.0, 5.0])
    for scale in ("group", "batch", "none"):
        torch.testing.assert_close(group_advantages(full, 3, scale, valid=torch.ones(6, dtype=torch.bool)),
                                   group_advantages(full, 3, scale))


# ------------------------------------------------------------------------------------------------ GRPO fits ----
def test_grpo_fit_with_a_nan_reward_stops_naming_reward_and_sample(overrides, tmp_path):
    cfg = compose("demo", grpo_overrides(overrides, tmp_path / "run", "module.grpo.num_generations=2",
                                         f"+reward.{NAN_REWARD}={{weight:1.0}}"))
    with pytest.raises(RewardError, match=rf"reward '{NAN_REWARD}' returned nan for completion 0 of 4, "
                                          rf"video 'demo_train_\d+\.mp4' \(task qa\)"):
        run("fit", cfg)


def test_grpo_fit_with_a_raising_reward_names_it(overrides, tmp_path, monkeypatch):
    import vau.rewards

    def boom(completions, samples, **ctx):
        raise KeyError("no such field")

    monkeypatch.setitem(REWARDS._entries, "test_boom", boom)
    cfg = compose("demo", grpo_overrides(overrides, tmp_path / "run", "module.grpo.num_generations=2",
                                         "+reward.test_boom={weight:1.0}"))
    with pytest.raises(vau.rewards.RewardError, match=r"reward 'test_boom' raised KeyError.*"
                                                      r"completion 0 of 4, video 'demo_train_\d+\.mp4' \(task qa\)"):
        run("fit", cfg)


def test_grpo_fit_skips_nan_completions_counts_them_and_keeps_them_out_of_the_loss(overrides, tmp_path, monkeypatch):
    from tests.test_fit import _scalars
    from vau.modules.grpo import GRPOModule

    masks = []
    real_loss = GRPOModule.loss

    def loss(self, rollout, advantages, *args, **kwargs):
        masks.append((rollout.mask.sum(dim=1).clone(), advantages.detach().clone()))
        return real_loss(self, rollout, advantages, *args, **kwargs)

    monkeypatch.setattr(GRPOModule, "loss", loss)
    run_dir = tmp_path / "run"
    cfg = compose("demo", grpo_overrides(overrides, run_dir, "module.grpo.num_generations=3",
                                         "module.grpo.nonfinite_rewards=skip", "module.optim.lr=1e-3",
                                         f"+reward.{NAN_REWARD}={{weight:1.0}}"))
    run("fit", cfg)
    assert _scalars(run_dir, "train/skipped_completions") == [1.0, 1.0]  # one NaN completion per step
    losses = _scalars(run_dir, "train/loss")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    for token_counts, advantages in masks:
        assert token_counts[0] == 0 and (token_counts[1:] > 0).all()  # the skipped completion is out of the loss
        assert advantages[0] == 0 and torch.isfinite(advantages).all()


# ------------------------------------------------------------------------------------ non-finite loss / grads ----
def _break(monkeypatch, how):
    """Let ``how(module)`` damage the module that ``vau.run.run`` builds (through vau.components)."""
    import vau.components

    real = vau.components.build_module

    def build_module(*args, **kwargs):
        module = real(*args, **kwargs)
        how(module)
        return module

    monkeypatch.setattr(vau.components, "build_module", build_module)


def _nan_weight(module):
    with torch.no_grad():
        module.model.lm_head.weight[0, 0] = math.nan


def _nan_grad(module):
    name, param = next((n, p) for n, p in module.model.named_parameters() if "layers.1.mlp.up_proj" in n)
    param.register_hook(lambda grad: grad * math.nan)


def test_sft_nan_loss_stops_with_the_step_and_cause(overrides, tmp_path, monkeypatch):
    _break(monkeypatch, _nan_weight)
    cfg = compose("demo", [*overrides, f"run_dir={tmp_path / 'run'}", "test_after_fit=false"])
    with pytest.raises(NonFiniteError, match=r"global step 0: the SFTModule loss is nan \(non-finite logits\)"):
        run("fit", cfg)


def test_sft_nan_gradient_stops_naming_the_parameter(overrides, tmp_path, monkeypatch):
    _break(monkeypatch, _nan_grad)
    cfg = compose("demo", [*overrides, f"run_dir={tmp_path / 'run'}", "test_after_fit=false"])
    with pytest.raises(NonFiniteError, match=r"global step 0: the loss is finite .* parameter "
                                             r"'model\..*layers\.1\.mlp\.up_proj\.weight' has a non-finite gradient"):
        run("fit", cfg)


def test_grpo_nan_gradient_stops_naming_the_parameter(overrides, tmp_path, monkeypatch):
    _break(monkeypatch, _nan_grad)
    cfg = compose("demo", grpo_overrides(overrides, tmp_path / "run", "module.grpo.num_generations=2",
                                         "module.grpo.beta=0.0"))
    with pytest.raises(NonFiniteError, match=r"global step 0: .*layers\.1\.mlp\.up_proj\.weight' has a non-finite"):
        run("fit", cfg)


def test_grpo_nan_loss_names_the_term(overrides, tmp_path, monkeypatch):
    from vau.modules.grpo import GRPOModule

    real = GRPOModule.token_logps

    def token_logps(self, model, rollout):
        logps, entropy = real(self, model, rollout)
        return (logps * math.nan, entropy) if model is self.model else (logps, entropy)

    monkeypatch.setattr(GRPOModule, "token_logps", token_logps)
    cfg = compose("demo", grpo_overrides(overrides, tmp_path / "run", "module.grpo.num_generations=2"))
    with pytest.raises(NonFiniteError, match=r"global step 0: the GRPOModule loss is nan \(non-finite policy log-probs"):
        run("fit", cfg)
