"""The clip mask truth table, tie rules, and the PPO min/clip ⇔ mask equivalence
(docs/concepts/algorithm.md §3.1 item 4)."""

from __future__ import annotations

import pytest
import torch

from keel_worker.core.clipping import clip_mask, ppo_clip_surrogate
from keel_worker.core.objectives import OBJECTIVES
from keel_worker.core.types import PolicyBatch

EPS_LOW, EPS_HIGH = 0.2, 0.27

# (Â, r, M): Â sign × r below / inside / above the range, and exactly at each bound.
TRUTH_TABLE = [
    (+1.0, 0.5, True),  # Â>0, r below: a positive update that moved down is never masked
    (+1.0, 1.0, True),
    (+1.0, 1.5, False),  # Â>0, r > 1+ε_high: masked
    (+1.0, 1.27, True),  # tie at 1+ε_high: strict inequality keeps it
    (+1.0, 0.8, True),
    (-1.0, 0.5, False),  # Â<0, r < 1−ε_low: masked
    (-1.0, 1.0, True),
    (-1.0, 1.5, True),  # Â<0, r above: never masked (no dual clip in MiniRL)
    (-1.0, 0.8, True),  # tie at 1−ε_low: kept
    (-1.0, 1.27, True),
    (0.0, 0.5, True),  # Â = 0 never masks (and contributes no gradient)
    (0.0, 1.0, True),
    (0.0, 1.5, True),
]


@pytest.mark.parametrize(("adv", "ratio", "keep"), TRUTH_TABLE)
def test_clip_mask_truth_table(adv, ratio, keep):
    ratio_B_T = torch.tensor([[ratio]], dtype=torch.float64)
    adv_B_T = torch.tensor([[adv]], dtype=torch.float64)
    mask = clip_mask(ratio_B_T, adv_B_T, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    assert bool(mask) is keep


@pytest.mark.parametrize(("adv", "ratio", "keep"), TRUTH_TABLE)
def test_min_clip_gradient_equals_mask_times_ratio_times_advantage(adv, ratio, keep):
    # ∂/∂log π of min(rÂ, clip(r)Â) with r = exp(log π − log π_old) is M·r·Â, ties included.
    log_old = torch.tensor([[-1.0]], dtype=torch.float64)
    logprobs = (log_old + torch.log(torch.tensor([[ratio]], dtype=torch.float64))).detach()
    logprobs.requires_grad_(True)
    ratio_B_T = torch.exp(logprobs - log_old)
    adv_B_T = torch.tensor([[adv]], dtype=torch.float64)
    ppo_clip_surrogate(ratio_B_T, adv_B_T, eps_low=EPS_LOW, eps_high=EPS_HIGH).sum().backward()
    expected = float(keep) * ratio_B_T.item() * adv
    assert logprobs.grad.item() == pytest.approx(expected, abs=1e-12)


def test_decoupled_ppo_gradient_is_mask_ratio_advantage_on_random_tokens(random_batch):
    # Without IS correction, ∂loss/∂log π_θ = −M·r·Â/normalizer for every token.
    batch = random_batch(11, rows=8, tokens=9, spread=0.3)
    hyper = {"eps_low": EPS_LOW, "eps_high": EPS_HIGH, "is_correction": None}
    out = OBJECTIVES["decoupled_ppo_tis"](batch, normalizer=7.0, **hyper, loss_agg="token_mean")
    out.loss.backward()
    ratio = torch.exp(batch.logprobs_B_T.detach() - batch.old_logprobs_B_T)
    keep = clip_mask(ratio, batch.advantages_B_T, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    expected = -(keep & batch.mask_B_T).double() * ratio * batch.advantages_B_T / 7.0
    torch.testing.assert_close(batch.logprobs_B_T.grad, expected)
    assert 0 < (~keep & batch.mask_B_T).sum() < batch.mask_B_T.sum()  # both cases occur


def test_minirl_equals_decoupled_ppo_times_train_infer_factor(random_batch):
    # docs/concepts/algorithm.md §3.1 item 4: MiniRL (scope train_infer, no truncation) has gradient
    # M·(π_old/μ)·r·Â·∇log π = the decoupled-PPO gradient weighted by π_old/μ.
    grads = []
    untruncated = {"mode": "token_truncate", "cap": float("inf")}
    for name, hyper in (
        (
            "minirl",
            {
                "use_clip": True,
                "clip_anchor": "pi_old",
                "is_scope": "train_infer",
                "length_norm": False,
            },
        ),
        ("decoupled_ppo_tis", {}),
    ):
        batch = random_batch(5, spread=0.3)
        out = OBJECTIVES[name](
            batch,
            normalizer=6.0,
            eps_low=EPS_LOW,
            eps_high=EPS_HIGH,
            is_correction=untruncated,
            loss_agg="seq_mean_token_sum",
            **hyper,
        )
        out.loss.backward()
        grads.append(batch.logprobs_B_T.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_tis_truncates_only_from_above(probs_batch):
    # π_θ/μ = [0.1, 1.0, 4.0, 8.0] with cap 5 → w = [0.1, 1.0, 4.0, 5.0]; r = 1 (on-policy),
    # Â = 1, no clip effect. ∂loss/∂log π = −w/1.
    probs = [[0.1, 0.5, 0.8, 0.8]]
    rollout = [[1.0, 0.5, 0.2, 0.1]]
    batch = probs_batch(probs, probs, rollout, [1.0])
    hyper = {
        "eps_low": EPS_LOW,
        "eps_high": EPS_HIGH,
        "use_clip": True,
        "clip_anchor": "pi_old",
        "is_correction": {"mode": "token_truncate", "cap": 5.0},
        "is_scope": "full",
        "length_norm": False,
        "loss_agg": "seq_mean_token_sum",
    }
    out = OBJECTIVES["minirl"](batch, normalizer=1.0, **hyper)
    out.loss.backward()
    expected = torch.tensor([[-0.1, -1.0, -4.0, -5.0]], dtype=torch.float64)
    torch.testing.assert_close(batch.logprobs_B_T.grad, expected)
    assert out.metrics["is/truncated_frac"].item() == pytest.approx(0.25)
    assert out.metrics["is/raw_min"].item() == pytest.approx(0.1)


def test_policy_batch_rejects_mismatched_shapes():
    ok = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages_B"):
        PolicyBatch(ok, ok, ok, torch.zeros(3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        PolicyBatch(ok, ok, ok, torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="rollout_logprobs_B_T"):
        PolicyBatch(ok, ok, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3, dtype=torch.bool))
