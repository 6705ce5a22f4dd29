"""IS-correction modes: hand values, statistics, and loop-vs-vectorized sequence ratios."""

from __future__ import annotations

import math

import pytest
import torch

from keel_worker.core.is_correction import IS_CORRECTIONS, is_weights
from keel_worker.core.masked import LOG_RATIO_CLAMP, masked_log_ratio

# Token ratios ρ_t: row 0 = [2, 0.5, 4] (ρ(y) = 4, geometric mean 4^(1/3) ≈ 1.587),
# row 1 = [0.25, 8] + padding (ρ(y) = 2, geometric mean √2 ≈ 1.414).
RATIOS = [[2.0, 0.5, 4.0], [0.25, 8.0, None]]
MASK = torch.tensor([[True, True, True], [True, True, False]])
LOG_RATIO = torch.tensor(
    [[0.0 if r is None else math.log(r) for r in row] for row in RATIOS], dtype=torch.float64
)


@pytest.mark.parametrize(
    ("correction", "expected", "truncated", "masked"),
    [
        # min(ρ_t, 2); the tie ρ = 2 is not counted as truncated.
        ({"mode": "token_truncate", "cap": 2.0}, [[2, 0.5, 2], [0.25, 2, 0]], 2 / 5, 0.0),
        # IcePop keeps ρ_t inside [0.5, 4] (inclusive), zeroes 0.25 and 8.
        ({"mode": "token_mask", "lower": 0.5, "upper": 4.0}, [[2, 0.5, 4], [0, 0, 0]], 0, 2 / 5),
        # min(ρ(y), 3) on every token: row 0's ρ(y) = 4 → 3, row 1's ρ(y) = 2 stays.
        ({"mode": "seq_truncate", "cap": 3.0}, [[3, 3, 3], [2, 2, 0]], 3 / 5, 0.0),
        # Seq-MIS drops row 0 (ρ = 4 > 2.5), keeps row 1 with its ρ(y) = 2.
        ({"mode": "seq_mask", "lower": 0.5, "upper": 2.5}, [[0, 0, 0], [2, 2, 0]], 0, 3 / 5),
        # Geo-RS [0.8, 1.5]: 1.587 rejected, 1.414 kept; weight 1 (pure rejection) ...
        (
            {"mode": "geo_mask", "lower": 0.8, "upper": 1.5, "token_cap": None},
            [[0, 0, 0], [1, 1, 0]],
            0,
            3 / 5,
        ),
        # ... or min(ρ_t, 3) on the kept tokens (Geo-RS-Token-TIS): 8 → 3.
        (
            {"mode": "geo_mask", "lower": 0.8, "upper": 1.5, "token_cap": 3.0},
            [[0, 0, 0], [0.25, 3, 0]],
            1 / 5,
            3 / 5,
        ),
    ],
)
def test_is_modes_hand_values(correction, expected, truncated, masked):
    weights, metrics = is_weights(LOG_RATIO, MASK, correction)
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64))
    assert metrics["is/truncated_frac"].item() == pytest.approx(truncated)
    assert metrics["is/masked_frac"].item() == pytest.approx(masked)


def test_no_correction_is_the_raw_ratio_with_its_statistics():
    weights, metrics = is_weights(LOG_RATIO, MASK, None)
    torch.testing.assert_close(weights, torch.tensor([[2, 0.5, 4], [0.25, 8, 0]]).double())
    assert metrics["is/raw_mean"].item() == pytest.approx((2 + 0.5 + 4 + 0.25 + 8) / 5)
    assert metrics["is/weight_min"].item() == pytest.approx(0.25)
    # ESS = (Σw)² / (n Σw²) = 14.75² / (5 · (4 + 0.25 + 16 + 0.0625 + 64))
    assert metrics["is/ess"].item() == pytest.approx(14.75**2 / (5 * 84.3125))


def test_equal_weights_have_full_effective_sample_size():
    _, metrics = is_weights(torch.zeros(2, 3, dtype=torch.float64), MASK, None)
    assert metrics["is/ess"].item() == pytest.approx(1.0)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown IS correction"):
        is_weights(LOG_RATIO, MASK, {"mode": "seq_clip", "cap": 1.0})


def test_log_ratio_is_clamped_and_zero_at_padding():
    num = torch.tensor([[0.0, -100.0, float("-inf")]], dtype=torch.float64)
    den = torch.tensor([[-50.0, 0.0, float("-inf")]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    expected = torch.tensor([[LOG_RATIO_CLAMP, -LOG_RATIO_CLAMP, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(masked_log_ratio(num, den, mask), expected)


def _loop_reference(log_ratio, mask, correction):
    """Row-by-row, token-by-token reference of the sequence-level modes (plain Python floats)."""
    params = dict(correction)
    mode = params.pop("mode")
    out = torch.zeros_like(log_ratio)
    for i in range(log_ratio.shape[0]):
        tokens = [float(log_ratio[i, t]) for t in range(log_ratio.shape[1]) if mask[i, t]]
        seq_ratio = math.exp(max(-LOG_RATIO_CLAMP, min(LOG_RATIO_CLAMP, sum(tokens))))
        geo = math.exp(sum(tokens) / max(len(tokens), 1))
        for t in range(log_ratio.shape[1]):
            if not mask[i, t]:
                continue
            if mode == "seq_truncate":
                out[i, t] = min(seq_ratio, params["cap"])
            elif mode == "seq_mask":
                keep = params["lower"] <= seq_ratio <= params["upper"]
                out[i, t] = seq_ratio if keep else 0.0
            else:
                keep = params["lower"] <= geo <= params["upper"]
                out[i, t] = min(math.exp(float(log_ratio[i, t])), params["token_cap"]) * keep
    return out


@pytest.mark.parametrize(
    "correction",
    [
        {"mode": "seq_truncate", "cap": 1.5},
        {"mode": "seq_mask", "lower": 0.7, "upper": 1.4},
        {"mode": "geo_mask", "lower": 0.95, "upper": 1.05, "token_cap": 1.05},
    ],
)
def test_sequence_modes_loop_vs_vectorized(random_batch, correction):
    batch = random_batch(21, rows=12, tokens=8, spread=0.15)
    log_ratio = masked_log_ratio(batch.old_logprobs_B_T, batch.rollout_logprobs_B_T, batch.mask_B_T)
    weights, _ = is_weights(log_ratio, batch.mask_B_T, correction)
    reference = _loop_reference(log_ratio, batch.mask_B_T, correction)
    torch.testing.assert_close(weights, reference)
    # The batch exercises both sides of the bound (otherwise the comparison proves little).
    row_weight = weights[:, 0]
    affected = (row_weight == 1.5) if correction["mode"] == "seq_truncate" else (row_weight == 0)
    assert 0 < affected.sum() < 12


def test_registry_lists_the_five_modes():
    assert set(IS_CORRECTIONS) == {
        "token_truncate",
        "token_mask",
        "seq_truncate",
        "seq_mask",
        "geo_mask",
    }
