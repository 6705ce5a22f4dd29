"""Diagnostics: mismatch KL/prob metrics, chunked entropy, routing disagreement."""

from __future__ import annotations

import math

import pytest
import torch

from keel_worker.core.diagnostics import (
    entropy_from_logits,
    mismatch_metrics,
    routing_disagreement,
)

# Three response tokens and one padding position:
#   π_old = [0.5, 0.2 | 0.9], μ_old = [0.4, 0.2 | 0.6]  → ρ = π_old/μ = [1.25, 1, 1.5]
OLD = torch.tensor([[0.5, 0.2], [0.9, 1.0]], dtype=torch.float64).log()
MU = torch.tensor([[0.4, 0.2], [0.6, 1e-30]], dtype=torch.float64).log()
MASK = torch.tensor([[True, True], [True, False]])


def test_mismatch_metrics_hand_values():
    m = mismatch_metrics(OLD, MU, MASK)
    # k1 = mean(log μ − log π_old) = (log 0.8 + 0 + log(2/3)) / 3
    assert m["mismatch/kl_k1"].item() == pytest.approx((math.log(0.8) + math.log(2 / 3)) / 3)
    # k3 = mean(ρ − log ρ − 1) = ((0.25 − log 1.25) + 0 + (0.5 − log 1.5)) / 3
    k3 = ((0.25 - math.log(1.25)) + (0.5 - math.log(1.5))) / 3
    assert m["mismatch/kl_k3"].item() == pytest.approx(k3)
    # |Δp| = [0.1, 0, 0.3]: mean 0.4/3, max 0.3, population std
    mean = 0.4 / 3
    std = math.sqrt(((0.1 - mean) ** 2 + mean**2 + (0.3 - mean) ** 2) / 3)
    assert m["mismatch/prob_diff_mean"].item() == pytest.approx(mean)
    assert m["mismatch/prob_diff_max"].item() == pytest.approx(0.3)
    assert m["mismatch/prob_diff_std"].item() == pytest.approx(std)
    reference = torch.corrcoef(torch.tensor([[0.5, 0.2, 0.9], [0.4, 0.2, 0.6]]))[0, 1]
    assert m["mismatch/prob_pearson"].item() == pytest.approx(reference.item(), rel=1e-6)


def test_no_mismatch_gives_zero_kl_and_unit_correlation():
    m = mismatch_metrics(OLD, OLD, MASK)
    assert m["mismatch/kl_k1"].item() == 0.0
    assert m["mismatch/kl_k3"].item() == 0.0
    assert m["mismatch/prob_diff_max"].item() == 0.0
    assert m["mismatch/prob_pearson"].item() == pytest.approx(1.0)


def test_mismatch_metrics_are_detached():
    old = OLD.clone().requires_grad_(True)
    assert all(not v.requires_grad for v in mismatch_metrics(old, MU, MASK).values())


def test_entropy_matches_categorical_and_ignores_padding():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64) * 3
    mask = torch.rand(3, 5, generator=gen) > 0.3
    logits[~mask] = float("nan")  # padding garbage must not leak into the sum
    total, count = entropy_from_logits(logits, mask, chunk_size=4)
    reference = torch.distributions.Categorical(logits=logits[mask]).entropy().sum()
    assert count.item() == mask.sum().item()
    torch.testing.assert_close(total, reference)
    # chunking is an implementation detail
    total_one_chunk, _ = entropy_from_logits(logits, mask, chunk_size=10_000)
    torch.testing.assert_close(total, total_one_chunk)


def test_entropy_of_uniform_logits_is_log_vocab_even_in_bfloat16():
    logits = torch.zeros(2, 3, 8, dtype=torch.bfloat16)
    mask = torch.ones(2, 3, dtype=torch.bool)
    total, count = entropy_from_logits(logits, mask, chunk_size=2)
    assert total.dtype == torch.float32
    assert (total / count).item() == pytest.approx(math.log(8), rel=1e-6)


def test_routing_disagreement_compares_expert_sets_per_layer():
    # [B=1, T=3, L=2, K=2]
    a = torch.tensor([[[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[0, 1], [2, 3]]]], dtype=torch.uint8)
    b = torch.tensor([[[[1, 0], [2, 4]], [[4, 5], [6, 7]], [[0, 2], [2, 3]]]], dtype=torch.uint8)
    mask = torch.tensor([[True, True, False]])
    # token 0: layer 0 same set in another order (agree), layer 1 {2,3} vs {2,4} (differ);
    # token 1 agrees everywhere; token 2 differs at layer 0 but is masked out.
    m = routing_disagreement(a, b, mask)
    torch.testing.assert_close(m["per_layer_L"], torch.tensor([0.0, 0.5]))
    assert m["any_layer"].item() == 0.5
    assert m["mean"].item() == 0.25
    with pytest.raises(ValueError, match="shapes differ"):
        routing_disagreement(a, b[:, :2], mask)
