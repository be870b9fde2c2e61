"""GRPO's tensor functions against values computed by hand."""

import math

import pytest
import torch

from vau.modules.grpo_loss import completion_mask, group_advantages, per_turn_advantages, policy_loss

# Two completions, three token slots; the second completion has one padded slot.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
OLD = torch.zeros(2, 3)
# Ratios exp(logp - old): row 0 = [1.5, 1.0, 0.5]; row 1 = [1.1, 0.7, (padding, 9.0)].
LOGPS = torch.log(torch.tensor([[1.5, 1.0, 0.5], [1.1, 0.7, 9.0]]))
ADV = torch.tensor([1.0, -2.0])


def hand_per_token():
    # eps = 0.2 both sides. Row 0, A = +1: min(r, clip(r)) -> 1.2 (clipped high), 1.0, 0.5 -> loss -1.2, -1.0, -0.5.
    # Row 1, A = -2: min(-2r, -2 clip(r)) -> r=1.1: min(-2.2, -2.2) = -2.2; r=0.7: min(-1.4, -1.6) = -1.6 (clipped low).
    # The loss is the negative: row 1 -> 2.2, 1.6; the padded slot never counts.
    return torch.tensor([[-1.2, -1.0, -0.5], [2.2, 1.6, 0.0]])


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_policy_loss_matches_hand_computation(loss_type):
    per_token = hand_per_token()
    expected = {
        "grpo": ((-1.2 - 1.0 - 0.5) / 3 + (2.2 + 1.6) / 2) / 2,
        "bnpo": (-1.2 - 1.0 - 0.5 + 2.2 + 1.6) / 5,
        "dr_grpo": (per_token * MASK).sum().item() / (2 * 4),  # B x max_completion_length (4)
        "dapo": (per_token * MASK).sum().item() / 10,  # 10 tokens in the global batch (num_items)
    }[loss_type]
    loss, stats = policy_loss(LOGPS, OLD, ADV, MASK, loss_type=loss_type, max_completion_length=4,
                              num_items=10.0 if loss_type == "dapo" else None)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Clipped: token (0,0) high with A>0; token (1,1) low with A<0; 5 real tokens.
    assert stats.clip_high.item() == pytest.approx(1 / 5)
    assert stats.clip_low.item() == pytest.approx(1 / 5)
    assert stats.clip_region.item() == pytest.approx(2 / 5)


def test_k3_kl_is_added_with_beta():
    ref = LOGPS - 0.1  # log(ref/pi) = -0.1 on every token
    k3 = math.exp(-0.1) + 0.1 - 1
    base, _ = policy_loss(LOGPS, OLD, ADV, MASK, loss_type="bnpo")
    with_kl, stats = policy_loss(LOGPS, OLD, ADV, MASK, loss_type="bnpo", beta=0.5, ref_logps=ref)
    assert with_kl.item() == pytest.approx(base.item() + 0.5 * k3, abs=1e-6)
    assert stats.kl.item() == pytest.approx(k3, abs=1e-6)


def test_sequence_level_ratio_is_the_geometric_mean():
    logps = torch.log(torch.tensor([[2.0, 0.5, 1.0]]))
    loss, _ = policy_loss(logps, torch.zeros(1, 3), torch.tensor([1.0]), torch.ones(1, 3), loss_type="grpo",
                          importance_sampling_level="sequence", epsilon_low=10, epsilon_high=10)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)  # (2 * 0.5 * 1) ** (1/3) = 1


def test_zero_advantages_give_zero_policy_gradient():
    logps = LOGPS.clone().requires_grad_(True)
    loss, _ = policy_loss(logps, OLD, torch.zeros(2), MASK, loss_type="grpo")
    loss.backward()
    assert torch.count_nonzero(logps.grad) == 0


def test_gradient_never_reaches_padding():
    logps = LOGPS.clone().requires_grad_(True)
    loss, _ = policy_loss(logps, OLD, ADV, MASK, loss_type="bnpo", beta=0.1, ref_logps=LOGPS.detach() - 0.3)
    loss.backward()
    assert logps.grad[1, 2] == 0 and logps.grad[0, 1] != 0


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_a_masked_position_holding_any_log_prob_leaves_the_loss_and_its_gradient_finite(level):
    """The padded slot holds log-probs whose ratio and KL overflow exp (a look conversation's video tokens, which the
    reference scores far from the policy, did this to a real step): loss and gradient equal those with harmless values
    there."""
    for extreme in (1e4, -1e4):
        logps = LOGPS.clone()
        logps[1, 2] = extreme
        ref = LOGPS.detach() - 0.3
        ref[1, 2] = -extreme
        tame = LOGPS.clone().requires_grad_(True)
        wild = logps.clone().requires_grad_(True)
        losses = []
        for x, r in ((tame, LOGPS.detach() - 0.3), (wild, ref)):
            loss, stats = policy_loss(x, OLD, ADV, MASK, loss_type="bnpo", beta=0.1, ref_logps=r,
                                      importance_sampling_level=level)
            loss.backward()
            losses.append(loss)
            assert torch.isfinite(loss) and torch.isfinite(stats.kl) and torch.isfinite(x.grad).all()
        torch.testing.assert_close(losses[0], losses[1])
        torch.testing.assert_close(tame.grad, wild.grad)


def test_completion_mask_stops_at_first_eos_and_flags_truncation():
    eos = 9
    ids = torch.tensor([[4, 9, 5, 9], [4, 5, 6, 7], [9, 0, 0, 0]])
    mask, truncated = completion_mask(ids, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_completion_mask_ends_at_any_of_several_eos_ids():
    ids = torch.tensor([[4, 8, 5, 9], [4, 5, 9, 8], [4, 5, 6, 7]])
    mask, truncated = completion_mask(ids, [9, 8])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]
    assert completion_mask(ids, (9,))[0].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]


def test_group_advantages_scalings():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv, zero = group_advantages(rewards, 4, "group", eps=0.0)
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std().item()
    assert adv[:4].tolist() == pytest.approx([0.5 / std, -0.5 / std, 0.5 / std, -0.5 / std])
    assert adv[4:].tolist() == [0, 0, 0, 0]
    assert zero.tolist() == [False, True]
    adv_none, _ = group_advantages(rewards, 4, "none")
    assert adv_none.tolist() == [0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0]
    adv_batch, _ = group_advantages(rewards, 4, "batch", eps=0.0)
    assert adv_batch.tolist() == pytest.approx((adv_none / rewards.std()).tolist())
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(rewards, 4, "global")


def test_per_turn_advantages_credit_each_turn_with_its_own_reward():
    """Two replies of one prompt: wrong -> right (first 0, final 1.5) and right -> right (first 1, final 1). Per turn,
    the first answer's tokens of the corrected reply are pushed down and those of the right one up, whatever the
    correction paid; jointly (total 1.5 vs 2.0 with the first answer paid) or with an unpaid first answer (1.5 vs 1.0,
    the old weights) the whole reply gets one sign."""
    first, final = torch.tensor([0.0, 1.0]), torch.tensor([1.5, 1.0])
    adv_first, _ = group_advantages(first, 2, "group", eps=0.0)
    adv_final, _ = group_advantages(final, 2, "group", eps=0.0)
    adv = per_turn_advantages(adv_first, adv_final, torch.tensor([2, 3]), 5)
    a = 1 / math.sqrt(2)  # each group of two: +-0.5 / std 0.7071
    assert torch.allclose(adv, torch.tensor([[-a, -a, a, a, a], [a, a, a, -a, -a]]))
    # no first answer: the whole reply is the final turn
    assert torch.allclose(per_turn_advantages(adv_first, adv_final, torch.tensor([0, 0]), 2),
                          torch.tensor([[a, a], [-a, -a]]))

    # The loss with per-token advantages: the gradient of each token's log-prob is -A_t / n_tokens (ratio 1, grpo).
    logps = torch.zeros(2, 5, requires_grad=True)
    mask = torch.tensor([[1.0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    loss, _ = policy_loss(logps, logps.detach(), adv, mask, loss_type="grpo")
    loss.backward()
    expected = -(adv * mask) / mask.sum(dim=1, keepdim=True) / 2
    assert torch.allclose(logps.grad, expected)
    assert logps.grad[0, :2].gt(0).all() and logps.grad[1, :3].lt(0).all()  # descent: first answer of 0 down, of 1 up
    # one advantage per reply is the same as that advantage on every token
    flat, _ = policy_loss(logps.detach(), logps.detach(), adv_final, mask, loss_type="bnpo")
    tiled, _ = policy_loss(logps.detach(), logps.detach(), adv_final.unsqueeze(1).expand(2, 5), mask, loss_type="bnpo")
    assert float(flat) == pytest.approx(float(tiled))
