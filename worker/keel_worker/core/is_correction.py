"""Importance-sampling corrections of a log-ratio, one function per mode
(docs/concepts/algorithm.md §8.1–8.3).

Each mode maps the detached, clamped per-token log-ratio log ρ_t (0 at padding) to a detached
weight per token. Which ratio is corrected is the objective's choice: MiniRL's full weight
π_θ/μ_old (Eq. 7 with TIS) or the training–inference factor π_old/μ_old (Eq. 5).

- ``token_truncate`` (TIS, Yao et al.):     w_t = min(ρ_t, C).  Upper bound only.
- ``token_mask`` (IcePop, Ring-1T):          w_t = ρ_t · 1[α ≤ ρ_t ≤ β]  (bounds inclusive).
- ``seq_truncate`` (Seq-TIS, Liu et al.):    w_t = min(ρ(y), C),  ρ(y) = Π_t ρ_t.
- ``seq_mask`` (Seq-MIS, Liu et al.):        w_t = ρ(y) · 1[lower ≤ ρ(y) ≤ upper].
- ``geo_mask`` (Geo-RS, Liu et al.):         w_t = 1[lower ≤ ρ(y)^{1/|y|} ≤ upper] · v_t with
  v_t = min(ρ_t, token_cap) (Geo-RS-Token-TIS) or 1 when ``token_cap`` is None (pure rejection).

Every mode also returns the uncorrected weight at the same granularity, for the statistics.
Parameters are keyword-only with no defaults: the defaults live in ``keel.types.algorithm``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from keel.types import metric_names as metric
from keel_worker.core.masked import (
    broadcast_rows,
    masked_fraction,
    masked_max,
    masked_mean,
    masked_min,
    masked_sum,
    response_lengths,
    safe_exp,
    zero_padding,
)

# (raw weight, corrected weight), both [B, T], detached, 0 at padding.
Weights = tuple[Tensor, Tensor]


def _seq_log_ratio_B(log_ratio_B_T: Tensor) -> Tensor:
    # log ρ(y) = Σ_t log ρ_t; padding already holds 0, so a plain sum is the masked sum.
    return log_ratio_B_T.sum(dim=-1)


def token_truncate(log_ratio_B_T: Tensor, mask_B_T: Tensor, *, cap: float) -> Weights:
    """TIS: w_t = min(ρ_t, cap)."""
    raw_B_T = zero_padding(safe_exp(log_ratio_B_T), mask_B_T)
    return raw_B_T, raw_B_T.clamp(max=cap)


def token_mask(log_ratio_B_T: Tensor, mask_B_T: Tensor, *, lower: float, upper: float) -> Weights:
    """IcePop: keep ρ_t where lower ≤ ρ_t ≤ upper, else 0."""
    raw_B_T = zero_padding(safe_exp(log_ratio_B_T), mask_B_T)
    keep_B_T = (raw_B_T >= lower) & (raw_B_T <= upper)
    return raw_B_T, torch.where(keep_B_T, raw_B_T, torch.zeros_like(raw_B_T))


def seq_truncate(log_ratio_B_T: Tensor, mask_B_T: Tensor, *, cap: float) -> Weights:
    """Seq-TIS: every token of y gets min(ρ(y), cap)."""
    seq_B = safe_exp(_seq_log_ratio_B(log_ratio_B_T))
    raw_B_T = zero_padding(broadcast_rows(seq_B, log_ratio_B_T), mask_B_T)
    return raw_B_T, raw_B_T.clamp(max=cap)


def seq_mask(log_ratio_B_T: Tensor, mask_B_T: Tensor, *, lower: float, upper: float) -> Weights:
    """Seq-MIS: every token of y gets ρ(y) if lower ≤ ρ(y) ≤ upper, else the sequence is dropped."""
    seq_B = safe_exp(_seq_log_ratio_B(log_ratio_B_T))
    keep_B = (seq_B >= lower) & (seq_B <= upper)
    raw_B_T = zero_padding(broadcast_rows(seq_B, log_ratio_B_T), mask_B_T)
    weight_B_T = torch.where(broadcast_rows(keep_B, mask_B_T), raw_B_T, torch.zeros_like(raw_B_T))
    return raw_B_T, weight_B_T


def geo_mask(
    log_ratio_B_T: Tensor,
    mask_B_T: Tensor,
    *,
    lower: float,
    upper: float,
    token_cap: float | None,
) -> Weights:
    """Geo-RS: reject y when its geometric-mean ratio leaves [lower, upper] (length-invariant)."""
    lengths_B = response_lengths(mask_B_T, log_ratio_B_T.dtype).clamp_min(1.0)
    geo_B = safe_exp(_seq_log_ratio_B(log_ratio_B_T) / lengths_B)
    keep_B_T = broadcast_rows((geo_B >= lower) & (geo_B <= upper), mask_B_T) & mask_B_T
    if token_cap is None:
        raw_B_T = mask_B_T.to(log_ratio_B_T.dtype)
        weight_B_T = raw_B_T
    else:
        raw_B_T = zero_padding(safe_exp(log_ratio_B_T), mask_B_T)
        weight_B_T = raw_B_T.clamp(max=token_cap)
    return raw_B_T, torch.where(keep_B_T, weight_B_T, torch.zeros_like(weight_B_T))


IS_CORRECTIONS: dict[str, Callable[..., Weights]] = {
    "token_truncate": token_truncate,
    "token_mask": token_mask,
    "seq_truncate": seq_truncate,
    "seq_mask": seq_mask,
    "geo_mask": geo_mask,
}


def weight_metrics(raw_B_T: Tensor, weight_B_T: Tensor, mask_B_T: Tensor) -> dict[str, Tensor]:
    """IS-weight statistics before/after correction, truncated/masked fractions and ESS
    (docs/concepts/algorithm.md §10.4).

    ESS = (Σ w)² / (n Σ w²) over the n response tokens: 1/mean(w̃²) with w̃ = w / mean(w), so it
    lies in (0, 1] and is 1 exactly when all weights are equal.
    """
    dtype = weight_B_T.dtype
    zeroed_B_T = weight_B_T == 0
    truncated_B_T = (weight_B_T < raw_B_T) & ~zeroed_B_T
    n = mask_B_T.sum().to(dtype).clamp_min(1.0)
    sum_w = masked_sum(weight_B_T, mask_B_T)
    sum_w2 = masked_sum(weight_B_T.square(), mask_B_T)
    metrics = {
        metric.IS_RAW_MEAN: masked_mean(raw_B_T, mask_B_T),
        metric.IS_RAW_MAX: masked_max(raw_B_T, mask_B_T),
        metric.IS_RAW_MIN: masked_min(raw_B_T, mask_B_T),
        metric.IS_WEIGHT_MEAN: sum_w / n,
        metric.IS_WEIGHT_MAX: masked_max(weight_B_T, mask_B_T),
        metric.IS_WEIGHT_MIN: masked_min(weight_B_T, mask_B_T),
        metric.IS_TRUNCATED_FRAC: masked_fraction(truncated_B_T, mask_B_T, dtype),
        metric.IS_MASKED_FRAC: masked_fraction(zeroed_B_T, mask_B_T, dtype),
        metric.IS_ESS: sum_w.square() / (n * sum_w2).clamp_min(torch.finfo(dtype).tiny),
    }
    return {key: value.detach() for key, value in metrics.items()}


def is_weights(
    log_ratio_B_T: Tensor, mask_B_T: Tensor, correction: Mapping[str, Any] | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Apply the IS correction described by ``correction`` (``{"mode": ..., **params}``).

    ``None`` means no correction: the raw ratio ρ_t itself. The log-ratio must come from
    :func:`keel_worker.core.masked.masked_log_ratio`; it is detached here because every IS weight
    in these objectives sits under a stop-gradient (Eq. 7's sg[·]). Returns (weights_B_T, metrics).
    """
    log_ratio_B_T = log_ratio_B_T.detach()
    if correction is None:
        raw_B_T = zero_padding(safe_exp(log_ratio_B_T), mask_B_T)
        return raw_B_T, weight_metrics(raw_B_T, raw_B_T, mask_B_T)
    params = dict(correction)
    mode = params.pop("mode")
    if mode not in IS_CORRECTIONS:
        raise ValueError(f"unknown IS correction {mode!r}; expected one of {tuple(IS_CORRECTIONS)}")
    raw_B_T, weight_B_T = IS_CORRECTIONS[mode](log_ratio_B_T, mask_B_T, **params)
    return weight_B_T, weight_metrics(raw_B_T, weight_B_T, mask_B_T)
