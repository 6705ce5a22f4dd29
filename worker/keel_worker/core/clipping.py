"""The trust-region pieces: the decoupled-PPO clip mask and the PPO min/clip surrogate.

MiniRL's token mask (paper Eq. 7, §3.1 item 4), with r_t = π_θ/π_anchor:

    M_t = 0 if Â > 0 and r_t > 1 + ε_high
          0 if Â < 0 and r_t < 1 − ε_low
          1 otherwise

Ties resolve as the spec's strict inequalities say: r_t exactly at 1 + ε_high (or 1 − ε_low) keeps
the token, and Â = 0 never masks (its gradient is zero anyway). The PPO surrogate
min(r·Â, clip(r, 1−ε_low, 1+ε_high)·Â) has gradient exactly M_t · r_t · Â · ∇log π_θ (§3.1 item 4,
"Equivalence"), with the same tie rule because torch.clamp passes the gradient at its bounds.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
    """Clip statistics per (micro-)batch (§10.10), all fractions of response tokens.

    ``clip/frac_pos``: Â > 0 and r > 1+ε_high; ``clip/frac_neg``: Â < 0 and r < 1−ε_low;
    ``clip/frac`` is their sum. ``clip/ppo_kl`` = mean(log π_anchor − log π_θ) (k1 estimator).
    """
    log_ratio_B_T = log_ratio_B_T.detach()
    ratio_B_T = safe_exp(log_ratio_B_T)
    dtype = ratio_B_T.dtype
    pos_B_T = (advantages_B_T > 0) & (ratio_B_T > 1.0 + eps_high)
    neg_B_T = (advantages_B_T < 0) & (ratio_B_T < 1.0 - eps_low)
    metrics = {
        "clip/frac": masked_fraction(pos_B_T | neg_B_T, mask_B_T, dtype),
        "clip/frac_pos": masked_fraction(pos_B_T, mask_B_T, dtype),
        "clip/frac_neg": masked_fraction(neg_B_T, mask_B_T, dtype),
        "clip/ratio_mean": masked_mean(ratio_B_T, mask_B_T),
        "clip/ratio_max": masked_max(ratio_B_T, mask_B_T),
        "clip/ratio_min": masked_min(ratio_B_T, mask_B_T),
        "clip/ppo_kl": masked_mean(-log_ratio_B_T, mask_B_T),
    }
    return {key: value.detach() for key, value in metrics.items()}
