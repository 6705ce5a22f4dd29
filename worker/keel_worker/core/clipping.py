"""The trust-region pieces: the decoupled-PPO clip mask, the PPO min/clip surrogate, and DPPO's
divergence masks.

MiniRL's token mask (paper Eq. 7; docs/concepts/algorithm.md §3.1 item 4), with r_t = π_θ/π_anchor:

    M_t = 0 if Â > 0 and r_t > 1 + ε_high
          0 if Â < 0 and r_t < 1 − ε_low
          1 otherwise

Ties resolve as the mask's strict inequalities say: r_t exactly at 1 + ε_high (or 1 − ε_low) keeps
the token, and Â = 0 never masks (its gradient is zero anyway). The PPO surrogate
min(r·Â, clip(r, 1−ε_low, 1+ε_high)·Â) has gradient exactly M_t · r_t · Â · ∇log π_θ (the
"Equivalence" of the same item), with the same tie rule because torch.clamp passes the gradient
at its bounds.

DPPO's masks (Qi et al., arXiv 2602.04879; docs/concepts/algorithm.md §8.9) bound a divergence
between the two-outcome distributions "the sampled token / any other token" under π_θ and the
anchor, with p = π_θ(y_t) and q = π_anchor(y_t):

    Binary-TV:  M_t = 0 if Â > 0 and p − q > δ_high,   or Â < 0 and p − q < −δ_low
    Binary-KL:  D_t = q·log(q/p) + (1−q)·log((1−q)/(1−p))
                M_t = 0 if Â > 0 and D_t > δ_high and p > q,   or Â < 0 and D_t > δ_low and p < q

A token is masked only when the update pushed it out of the region in the direction its advantage
asks for. Ties keep the token (p − q = δ_high, D_t = δ exactly: "<=" keeps), and Â = 0 never masks,
as for the PPO mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from keel.types import metric_names as metric
from keel_worker.core.masked import (
    masked_fraction,
    masked_max,
    masked_mean,
    masked_min,
    safe_exp,
)


def clip_mask(
    ratio_B_T: Tensor, advantages_B_T: Tensor, *, eps_low: float, eps_high: float
) -> Tensor:
    """M_t of Eq. 7 as a bool tensor (True = the token keeps its gradient)."""
    above_B_T = (advantages_B_T > 0) & (ratio_B_T > 1.0 + eps_high)
    below_B_T = (advantages_B_T < 0) & (ratio_B_T < 1.0 - eps_low)
    return ~(above_B_T | below_B_T)


def ppo_clip_surrogate(
    ratio_B_T: Tensor, advantages_B_T: Tensor, *, eps_low: float, eps_high: float
) -> Tensor:
    """min(r·Â, clip(r, 1−ε_low, 1+ε_high)·Â) per token: the quantity to MAXIMIZE (App. A)."""
    clipped_B_T = ratio_B_T.clamp(1.0 - eps_low, 1.0 + eps_high)
    return torch.minimum(ratio_B_T * advantages_B_T, clipped_B_T * advantages_B_T)


def clip_metrics(
    log_ratio_B_T: Tensor,
    advantages_B_T: Tensor,
    mask_B_T: Tensor,
    *,
    eps_low: float,
    eps_high: float,
) -> dict[str, Tensor]:
    """Clip statistics per (micro-)batch (docs/concepts/algorithm.md §10.5), all fractions of
    response tokens.

    ``clip/frac_pos``: Â > 0 and r > 1+ε_high; ``clip/frac_neg``: Â < 0 and r < 1−ε_low;
    ``clip/frac`` is their sum. ``clip/ppo_kl`` = mean(log π_anchor − log π_θ) (k1 estimator).
    """
    log_ratio_B_T = log_ratio_B_T.detach()
    ratio_B_T = safe_exp(log_ratio_B_T)
    dtype = ratio_B_T.dtype
    pos_B_T = (advantages_B_T > 0) & (ratio_B_T > 1.0 + eps_high)
    neg_B_T = (advantages_B_T < 0) & (ratio_B_T < 1.0 - eps_low)
    metrics = {
        metric.CLIP_FRAC: masked_fraction(pos_B_T | neg_B_T, mask_B_T, dtype),
        metric.CLIP_FRAC_POS: masked_fraction(pos_B_T, mask_B_T, dtype),
        metric.CLIP_FRAC_NEG: masked_fraction(neg_B_T, mask_B_T, dtype),
        metric.CLIP_RATIO_MEAN: masked_mean(ratio_B_T, mask_B_T),
        metric.CLIP_RATIO_MAX: masked_max(ratio_B_T, mask_B_T),
        metric.CLIP_RATIO_MIN: masked_min(ratio_B_T, mask_B_T),
        metric.CLIP_PPO_KL: masked_mean(-log_ratio_B_T, mask_B_T),
    }
    return {key: value.detach() for key, value in metrics.items()}


def binary_tv_mask(
    logprobs_B_T: Tensor,
    anchor_logprobs_B_T: Tensor,
    advantages_B_T: Tensor,
    *,
    delta_low: float,
    delta_high: float,
) -> Tensor:
    """DPPO's Binary-TV M_t on p − q (True = the token keeps its gradient)."""
    diff_B_T = torch.exp(logprobs_B_T) - torch.exp(anchor_logprobs_B_T)
    above_B_T = (advantages_B_T > 0) & (diff_B_T > delta_high)
    below_B_T = (advantages_B_T < 0) & (diff_B_T < -delta_low)
    return ~(above_B_T | below_B_T)


def _log_one_minus(logprobs_B_T: Tensor) -> Tensor:
    # log(1 − p) via expm1 (accurate near p = 1), clamped so that p = 1 gives a large finite
    # value instead of −inf (and 0·log 0 below stays 0 instead of NaN).
    tiny = torch.finfo(logprobs_B_T.dtype).tiny
    return torch.log((-torch.expm1(logprobs_B_T)).clamp_min(tiny))


def binary_kl(logprobs_B_T: Tensor, anchor_logprobs_B_T: Tensor) -> Tensor:
    """D_t = KL(Bernoulli(q) ‖ Bernoulli(p)) per token, from finite log p and log q."""
    q_B_T = torch.exp(anchor_logprobs_B_T)
    token_B_T = q_B_T * (anchor_logprobs_B_T - logprobs_B_T)
    log_rest_ratio_B_T = _log_one_minus(anchor_logprobs_B_T) - _log_one_minus(logprobs_B_T)
    rest_B_T = (1.0 - q_B_T) * log_rest_ratio_B_T
    return token_B_T + rest_B_T


def binary_kl_mask(
    logprobs_B_T: Tensor,
    anchor_logprobs_B_T: Tensor,
    advantages_B_T: Tensor,
    *,
    delta_low: float,
    delta_high: float,
) -> Tensor:
    """DPPO's Binary-KL M_t (True = the token keeps its gradient)."""
    kl_B_T = binary_kl(logprobs_B_T, anchor_logprobs_B_T)
    up_B_T = logprobs_B_T > anchor_logprobs_B_T
    down_B_T = logprobs_B_T < anchor_logprobs_B_T
    above_B_T = (advantages_B_T > 0) & up_B_T & (kl_B_T > delta_high)
    below_B_T = (advantages_B_T < 0) & down_B_T & (kl_B_T > delta_low)
    return ~(above_B_T | below_B_T)


def divergence_metrics(
    logprobs_B_T: Tensor,
    anchor_logprobs_B_T: Tensor,
    keep_B_T: Tensor,
    advantages_B_T: Tensor,
    mask_B_T: Tensor,
) -> dict[str, Tensor]:
    """DPPO mask statistics, all over response tokens, with the names of :func:`clip_metrics`.

    ``clip/frac_pos`` / ``clip/frac_neg``: masked tokens with Â > 0 / Â < 0; ``clip/frac``: all
    masked tokens; ``clip/tv_mean`` = mean |p − q|; ``clip/binary_kl_mean`` = mean D_t.
    """
    logprobs_B_T = logprobs_B_T.detach()
    anchor_logprobs_B_T = anchor_logprobs_B_T.detach()
    dtype = logprobs_B_T.dtype
    dropped_B_T = ~keep_B_T
    tv_B_T = (torch.exp(logprobs_B_T) - torch.exp(anchor_logprobs_B_T)).abs()
    metrics = {
        metric.CLIP_FRAC: masked_fraction(dropped_B_T, mask_B_T, dtype),
        metric.CLIP_FRAC_POS: masked_fraction(dropped_B_T & (advantages_B_T > 0), mask_B_T, dtype),
        metric.CLIP_FRAC_NEG: masked_fraction(dropped_B_T & (advantages_B_T < 0), mask_B_T, dtype),
        metric.CLIP_TV_MEAN: masked_mean(tv_B_T, mask_B_T),
        metric.CLIP_BINARY_KL_MEAN: masked_mean(
            binary_kl(logprobs_B_T, anchor_logprobs_B_T), mask_B_T
        ),
    }
    return {key: value.detach() for key, value in metrics.items()}
