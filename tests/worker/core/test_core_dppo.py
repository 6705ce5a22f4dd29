"""DPPO (docs/concepts/algorithm.md §8.9): hand-computed losses, the two masks' truth tables, the μ
anchor.

The reference batch (conftest.py), with q = μ_old(y_t) the anchor and p = π_θ(y_t):
    token   p      π_old  q      p − q    π_θ/μ_old   Â
    (0,0)   0.60   0.50   0.40   +0.20    1.5         +1
    (0,1)   0.55   0.50   0.05   +0.50    11          +1
    (0,2)   0.90   0.60   0.60   +0.30    1.5         +1
    (1,0)   0.30   0.50   0.50   −0.20    0.6         −0.5
    (1,1)   0.80   0.40   0.20   +0.60    4.0         −0.5
Binary KL D = q·ln(q/p) + (1−q)·ln((1−q)/(1−p)) per token:
    (0,0)  0.4·ln(0.4/0.6) + 0.6·ln(0.6/0.4) = 0.2·ln 1.5                  ≈ 0.0811
    (0,1)  0.05·ln(0.05/0.55) + 0.95·ln(0.95/0.45)                          ≈ 0.5900
    (0,2)  0.6·ln(0.6/0.9) + 0.4·ln(0.4/0.1)                                ≈ 0.3112
    (1,0)  0.5·ln(0.5/0.3) + 0.5·ln(0.5/0.7)                                ≈ 0.0872
    (1,1)  0.2·ln(0.2/0.8) + 0.8·ln(0.8/0.2) = 0.6·ln 4                     ≈ 0.8318
Tie rule of both masks: a divergence exactly at its bound keeps the token ("<=" keeps); Â = 0
never masks.
"""

from __future__ import annotations

import math
from math import log

import pytest
import torch

from keel_worker.core.clipping import binary_kl, binary_kl_mask, binary_tv_mask
from keel_worker.core.objectives import OBJECTIVES
from keel_worker.core.types import PolicyBatch

SUM = "seq_mean_token_sum"
D_REF = [
    0.2 * log(1.5),
    0.05 * log(0.05 / 0.55) + 0.95 * log(0.95 / 0.45),
    0.6 * log(0.6 / 0.9) + 0.4 * log(0.4 / 0.1),
    0.5 * log(0.5 / 0.3) + 0.5 * log(0.5 / 0.7),
    0.6 * log(4.0),
]


DIVERGENCE = {"dppo_tv": "tv", "dppo_kl": "kl"}  # what each name's wire model fixes


def run(name, batch, normalizer, **hyper):
    hyper.setdefault("divergence", DIVERGENCE[name])
    out = OBJECTIVES[name](batch, normalizer=normalizer, **hyper)
    out.loss.backward()
    return out, batch.logprobs_B_T.grad


def logs(values: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor([values], dtype=torch.float64))


def _replace(batch: PolicyBatch, **fields: torch.Tensor) -> PolicyBatch:
    values = {
        "logprobs_B_T": batch.logprobs_B_T,
        "old_logprobs_B_T": batch.old_logprobs_B_T,
        "rollout_logprobs_B_T": batch.rollout_logprobs_B_T,
        "advantages_B": batch.advantages_B,
        "mask_B_T": batch.mask_B_T,
    }
    return PolicyBatch(**(values | fields))


def test_dppo_tv_loss_gradient_and_metrics(ref_batch):
    # δ_low = δ_high = 0.25: Â>0 drops p − q > 0.25 → (0,1) 0.50 and (0,2) 0.30; (0,0) 0.20
    # stays. Â<0 drops p − q < −0.25 → none ((1,0) is −0.20; (1,1) moved up, never dropped).
    # w = min(π_θ/μ, 10) = [1.5, 10, 1.5 | 0.6, 4]. ℓ = −M·w·Â·log p, summed, / 2 responses.
    hyper = {"delta_low": 0.25, "delta_high": 0.25, "is_cap": 10.0, "loss_agg": SUM}
    out, grad = run("dppo_tv", ref_batch(), 2.0, **hyper)
    expected = (-1.5 * log(0.6) + 0.5 * 0.6 * log(0.3) + 0.5 * 4.0 * log(0.8)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    # ∂loss/∂log p = −M·w·Â/2 = [−1.5/2, 0, 0 | 0.6·0.5/2, 4·0.5/2]; padding 0.
    expected_grad = torch.tensor([[-0.75, 0.0, 0.0], [0.15, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected_grad)
    m = out.metrics
    assert m["clip/frac_pos"].item() == pytest.approx(2 / 5)
    assert m["clip/frac_neg"].item() == 0.0
    assert m["clip/frac"].item() == pytest.approx(2 / 5)
    assert m["clip/tv_mean"].item() == pytest.approx((0.2 + 0.5 + 0.3 + 0.2 + 0.6) / 5)
    assert m["clip/binary_kl_mean"].item() == pytest.approx(sum(D_REF) / 5)
    # IS statistics of π_θ/μ = [1.5, 11, 1.5, 0.6, 4] truncated at 10: one token truncated.
    assert m["is/raw_max"].item() == pytest.approx(11.0)
    assert m["is/weight_max"].item() == pytest.approx(10.0)
    assert m["is/truncated_frac"].item() == pytest.approx(1 / 5)
    assert m["is/weight_mean"].item() == pytest.approx((1.5 + 10 + 1.5 + 0.6 + 4) / 5)
    assert all(not value.requires_grad for value in m.values())


def test_dppo_tv_without_truncation_keeps_the_raw_weight(ref_batch):
    # δ_high = 0.6 keeps every token; is_cap = inf leaves (0,1) its raw weight 11 (not 10).
    hyper = {"delta_low": 0.25, "delta_high": 0.6, "is_cap": math.inf, "loss_agg": SUM}
    out, grad = run("dppo_tv", ref_batch(), 2.0, **hyper)
    expected = (
        -1.5 * log(0.6) - 11 * log(0.55) - 1.5 * log(0.9) + 0.3 * log(0.3) + 2.0 * log(0.8)
    ) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert grad[0, 1].item() == pytest.approx(-11 / 2)
    assert out.metrics["is/truncated_frac"].item() == 0.0


def test_dppo_kl_loss_gradient_and_metrics(ref_batch):
    # δ = 0.085: Â>0 with p>q drops D > 0.085 → (0,1) 0.59 and (0,2) 0.31; (0,0) 0.0811 stays.
    # Â<0 with p<q drops D > 0.085 → (1,0) 0.0872; (1,1) moved up (p>q), never dropped.
    hyper = {"delta_low": 0.085, "delta_high": 0.085, "is_cap": 10.0, "loss_agg": SUM}
    out, grad = run("dppo_kl", ref_batch(), 2.0, **hyper)
    expected = (-1.5 * log(0.6) + 0.5 * 4.0 * log(0.8)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    expected_grad = torch.tensor([[-0.75, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected_grad)
    m = out.metrics
    assert m["clip/frac_pos"].item() == pytest.approx(2 / 5)
    assert m["clip/frac_neg"].item() == pytest.approx(1 / 5)
    assert m["clip/frac"].item() == pytest.approx(3 / 5)
    assert m["clip/binary_kl_mean"].item() == pytest.approx(sum(D_REF) / 5)


def test_binary_kl_matches_the_hand_values_and_stays_finite_at_the_edges(ref_batch):
    batch = ref_batch()
    mask = batch.mask_B_T
    kl = binary_kl(batch.logprobs_B_T.detach()[mask], batch.rollout_logprobs_B_T[mask])
    torch.testing.assert_close(kl, torch.tensor(D_REF, dtype=torch.float64))
    # q = 1: D = 1·ln(1/p) + 0 (the (1−q) term is 0, not 0·(−inf) = NaN); p = q = 1: D = 0;
    # p = 1 > q: log(1 − p) is clamped, D is large but finite.
    edge = binary_kl(logs([0.5, 1.0, 1.0]), logs([1.0, 1.0, 0.5]))
    assert edge[0, 0].item() == pytest.approx(log(2.0), abs=1e-12)
    assert edge[0, 1].item() == 0.0
    assert torch.isfinite(edge).all() and edge[0, 2].item() > 100


# (Â, p, q, M) with δ_low = 0.125, δ_high = 0.25 (ties: test_masks_keep_the_tie_and_drop_above).
TV_TABLE = [
    (+1.0, 0.5, 0.4, True),  # moved up by 0.1 ≤ δ_high
    (+1.0, 0.8, 0.5, False),  # moved up by 0.3 > δ_high
    (+1.0, 0.3, 0.5, True),  # moved down by 0.2 > δ_low: Â>0 never looks at δ_low
    (+1.0, 0.1, 0.9, True),  # moved down a lot: never dropped for Â>0
    (-1.0, 0.4, 0.5, True),  # moved down by 0.1 ≤ δ_low
    (-1.0, 0.3, 0.5, False),  # moved down by 0.2 > δ_low (while 0.2 ≤ δ_high)
    (-1.0, 0.9, 0.1, True),  # moved up a lot: never dropped for Â<0
    (0.0, 0.9, 0.1, True),  # Â = 0 never masks
    (0.0, 0.1, 0.9, True),
]


@pytest.mark.parametrize(("adv", "p", "q", "keep"), TV_TABLE)
def test_binary_tv_mask_truth_table(adv, p, q, keep):
    adv_B_T = torch.tensor([[adv]], dtype=torch.float64)
    mask = binary_tv_mask(logs([p]), logs([q]), adv_B_T, delta_low=0.125, delta_high=0.25)
    assert bool(mask) is keep


# (Â, p, q, M) with δ_low = 0.5, δ_high = 0.05 (asymmetric, so each side's bound is visible).
KL_TABLE = [
    (+1.0, 0.45, 0.4, True),  # up, D ≈ 0.0051 ≤ δ_high
    (+1.0, 0.6, 0.4, False),  # up, D = 0.2·ln 1.5 ≈ 0.081 > δ_high
    (+1.0, 0.6, 0.2, False),  # up, D ≈ 0.335 > δ_high (though ≤ δ_low)
    (+1.0, 0.2, 0.6, True),  # down, D ≈ 0.382: p ≤ q always keeps for Â>0
    (+1.0, 0.5, 0.5, True),  # p = q, D = 0
    (-1.0, 0.2, 0.6, True),  # down, D ≈ 0.382 ≤ δ_low
    (-1.0, 0.05, 0.6, False),  # down, D = 0.6·ln 12 + 0.4·ln(0.4/0.95) ≈ 1.145 > δ_low
    (-1.0, 0.99, 0.1, True),  # up a lot: p ≥ q always keeps for Â<0
    (0.0, 0.99, 0.1, True),  # Â = 0 never masks
    (0.0, 0.05, 0.6, True),
]


@pytest.mark.parametrize(("adv", "p", "q", "keep"), KL_TABLE)
def test_binary_kl_mask_truth_table(adv, p, q, keep):
    adv_B_T = torch.tensor([[adv]], dtype=torch.float64)
    mask = binary_kl_mask(logs([p]), logs([q]), adv_B_T, delta_low=0.5, delta_high=0.05)
    assert bool(mask) is keep


def _tv(logp: torch.Tensor, logq: torch.Tensor) -> float:
    # |p − q|: the distance the Binary-TV mask bounds (δ_high above q, δ_low below it).
    return abs((torch.exp(logp) - torch.exp(logq)).item())


@pytest.mark.parametrize(
    ("mask_fn", "divergence"),
    [(binary_tv_mask, _tv), (binary_kl_mask, lambda a, b: binary_kl(a, b).item())],
)
@pytest.mark.parametrize(("adv", "p", "q"), [(+1.0, 0.6, 0.4), (-1.0, 0.3, 0.5)])
def test_masks_keep_the_tie_and_drop_above(mask_fn, divergence, adv, p, q):
    # With the bound set to the token's own divergence the token stays ("<=" keeps); one ulp
    # lower it is dropped. Â>0 moved up (p > q), Â<0 moved down: the sides each bound guards.
    logp, logq = logs([p]), logs([q])
    adv_B_T = torch.tensor([[adv]], dtype=torch.float64)
    d = divergence(logp, logq)
    below = math.nextafter(d, 0.0)
    at_bound = mask_fn(logp, logq, adv_B_T, delta_low=d, delta_high=d)
    above_bound = mask_fn(logp, logq, adv_B_T, delta_low=below, delta_high=below)
    assert bool(at_bound) is True
    assert bool(above_bound) is False


HYPER = {
    "dppo_tv": {
        "divergence": "tv",
        "delta_low": 0.1,
        "delta_high": 0.15,
        "is_cap": 2.0,
        "loss_agg": SUM,
    },
    "dppo_kl": {
        "divergence": "kl",
        "delta_low": 0.02,
        "delta_high": 0.03,
        "is_cap": 2.0,
        "loss_agg": SUM,
    },
}
MASKS = {"dppo_tv": binary_tv_mask, "dppo_kl": binary_kl_mask}


@pytest.mark.parametrize("name", sorted(HYPER))
def test_gradient_is_mask_times_truncated_weight_times_advantage(random_batch, name):
    # ∂loss/∂log π_θ = −M·min(π_θ/μ, C)·Â/normalizer exactly: M and w carry no gradient (a
    # weight with gradient would add w·Â·log π_θ terms). π_old and μ get no gradient at all.
    batch = random_batch(13, rows=8, tokens=9, spread=0.3)
    batch = _replace(
        batch,
        old_logprobs_B_T=batch.old_logprobs_B_T.clone().requires_grad_(True),
        rollout_logprobs_B_T=batch.rollout_logprobs_B_T.clone().requires_grad_(True),
    )
    hyper = HYPER[name]
    _, grad = run(name, batch, 7.0, **hyper)
    logp, logq = batch.logprobs_B_T.detach(), batch.rollout_logprobs_B_T.detach()
    keep = MASKS[name](
        logp,
        logq,
        batch.advantages_B_T,
        delta_low=hyper["delta_low"],
        delta_high=hyper["delta_high"],
    )
    weight = torch.exp(logp - logq).clamp(max=hyper["is_cap"])
    kept = keep & batch.mask_B_T
    expected = torch.where(kept, -weight * batch.advantages_B_T / 7.0, torch.zeros_like(weight))
    torch.testing.assert_close(grad, expected)
    assert 0 < kept.sum() < batch.mask_B_T.sum()  # both kept and dropped tokens occur
    assert ((weight == hyper["is_cap"]) & kept).any()  # and the cap binds on a kept token
    assert batch.old_logprobs_B_T.grad is None
    assert batch.rollout_logprobs_B_T.grad is None


@pytest.mark.parametrize("name", sorted(HYPER))
def test_the_anchor_is_mu_and_pi_old_plays_no_part(random_batch, name):
    # Same π_θ and μ, a very different π_old: loss, gradient and metrics are identical.
    base, base_grad = run(name, random_batch(17, spread=0.3), 6.0, **HYPER[name])
    other = random_batch(17, spread=0.3)
    other = _replace(other, old_logprobs_B_T=(other.old_logprobs_B_T - 1.3).clamp(max=0.0))
    moved_old, moved_old_grad = run(name, other, 6.0, **HYPER[name])
    torch.testing.assert_close(moved_old.loss, base.loss)
    torch.testing.assert_close(moved_old_grad, base_grad)
    assert moved_old.metrics.keys() == base.metrics.keys()
    for key, value in base.metrics.items():
        torch.testing.assert_close(moved_old.metrics[key], value, msg=key)
    # Moving μ instead moves the loss: the comparison above can fail.
    other = random_batch(17, spread=0.3)
    other = _replace(other, rollout_logprobs_B_T=(other.rollout_logprobs_B_T - 0.4).clamp(max=0.0))
    moved_mu, _ = run(name, other, 6.0, **HYPER[name])
    assert abs(moved_mu.loss.item() - base.loss.item()) > 1e-3


def test_one_loss_serves_both_names_and_an_unknown_divergence_is_refused(ref_batch):
    assert OBJECTIVES["dppo_tv"] is OBJECTIVES["dppo_kl"]
    with pytest.raises(ValueError, match="divergence"):
        run(
            "dppo_tv",
            ref_batch(),
            2.0,
            divergence="js",
            delta_low=0.1,
            delta_high=0.1,
            is_cap=10.0,
            loss_agg=SUM,
        )
