"""Group advantages: hand values, zero-variance groups, loop-vs-vectorized."""

from __future__ import annotations

import math

import pytest
import torch

from keel_worker.core.advantages import ADVANTAGE_MODES, STD_EPS, compute_advantages

# Group 0: rewards [1, 0, 0, 1] (mean 0.5, unbiased std √(4·0.25/3) = √(1/3));
# group 1: [1, 1, 1, 1] (zero variance); group 2: [0, 0, 0, 3] (mean 0.75, std 1.5).
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])


def test_group_mean_subtracts_the_group_mean_only():
    adv, zero_var = compute_advantages(REWARDS, mode="group_mean")
    expected = [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.75, -0.75, -0.75, 2.25]]
    torch.testing.assert_close(adv, torch.tensor(expected))
    assert zero_var.tolist() == [False, True, False]


def test_mean_std_divides_by_the_unbiased_std():
    adv, _ = compute_advantages(REWARDS, mode="mean_std")
    s0 = math.sqrt(1 / 3) + STD_EPS
    s2 = 1.5 + STD_EPS
    expected = [
        [0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0],
        [0, 0, 0, 0],
        [-0.75 / s2, -0.75 / s2, -0.75 / s2, 2.25 / s2],
    ]
    torch.testing.assert_close(adv, torch.tensor(expected))


def test_rloo_leaves_each_sample_out():
    adv, _ = compute_advantages(REWARDS, mode="rloo")
    # group 0, sample 0: 1 − mean(0, 0, 1) = 2/3; sample 1: 0 − mean(1, 0, 1) = −2/3.
    # group 2, sample 3: 3 − 0 = 3; others: 0 − 1 = −1.
    expected = [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0, 0, 0, 0], [-1, -1, -1, 3]]
    torch.testing.assert_close(adv, torch.tensor(expected))


def _loop_reference(rewards, mode):
    out = torch.zeros_like(rewards)
    for p in range(rewards.shape[0]):
        group = [float(r) for r in rewards[p]]
        g = len(group)
        mean = sum(group) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (g - 1))
        for i, r in enumerate(group):
            if mode == "group_mean":
                out[p, i] = r - mean
            elif mode == "mean_std":
                out[p, i] = (r - mean) / (std + STD_EPS)
            else:
                out[p, i] = r - (sum(group) - r) / (g - 1)
    return out


@pytest.mark.parametrize("mode", ADVANTAGE_MODES)
def test_loop_vs_vectorized(mode):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    adv, zero_var = compute_advantages(rewards, mode=mode)
    torch.testing.assert_close(adv, _loop_reference(rewards, mode))
    assert not zero_var.any()


def test_group_of_one_works_for_group_mean_only():
    adv, zero_var = compute_advantages(torch.tensor([[0.7], [0.1]]), mode="group_mean")
    assert adv.tolist() == [[0.0], [0.0]]
    assert zero_var.tolist() == [True, True]
    for mode in ("mean_std", "rloo"):
        with pytest.raises(ValueError, match="group size"):
            compute_advantages(torch.tensor([[0.7]]), mode=mode)
    with pytest.raises(ValueError, match="unknown advantage mode"):
        compute_advantages(REWARDS, mode="gae")
