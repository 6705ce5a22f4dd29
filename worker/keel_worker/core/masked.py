"""Masked reductions and numerically safe ratios shared by the objectives and diagnostics.

Everything here is pure torch and keeps the autograd graph (callers detach where the spec has a
stop-gradient). Padding positions are excluded with ``torch.where`` rather than multiplication so
that garbage at padding (``-inf`` log-probs, NaN) never reaches a sum or a gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

# exp(±20) ≈ 4.9e8 / 2.1e-9: far beyond any cap or mask bound in use, yet it keeps exp() finite
# in float16/bfloat16/float32 (the same safety bound as verl's rollout correction;
# docs/concepts/algorithm.md §9.1).
LOG_RATIO_CLAMP = 20.0


def masked_log_ratio(
    logprobs_num_B_T: Tensor, logprobs_den_B_T: Tensor, mask_B_T: Tensor
) -> Tensor:
    """log(num/den) per token, clamped to ±LOG_RATIO_CLAMP and exactly 0 at padding."""
    diff_B_T = (logprobs_num_B_T - logprobs_den_B_T).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.where(mask_B_T, diff_B_T, torch.zeros_like(diff_B_T))


def safe_exp(log_ratio: Tensor) -> Tensor:
    """exp() of a log-ratio after clamping it to ±LOG_RATIO_CLAMP (works for any shape)."""
    return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def zero_padding(values_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """``values`` at response tokens, 0 elsewhere (gradient-safe even if padding holds inf/NaN)."""
    return torch.where(mask_B_T, values_B_T, torch.zeros_like(values_B_T))


def response_lengths(mask_B_T: Tensor, dtype: torch.dtype) -> Tensor:
    """Number of response tokens per row, as ``dtype`` (shape [B])."""
    return mask_B_T.sum(dim=-1).to(dtype)


def masked_sum(values_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """Sum over response tokens (scalar)."""
    return zero_padding(values_B_T, mask_B_T).sum()


def masked_mean(values_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """Mean over response tokens (scalar); 0 when the mask is empty."""
    count = mask_B_T.sum().to(values_B_T.dtype).clamp_min(1.0)
    return masked_sum(values_B_T, mask_B_T) / count


def masked_max(values_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """Max over response tokens (scalar); -inf when the mask is empty."""
    fill = torch.full_like(values_B_T, float("-inf"))
    return torch.where(mask_B_T, values_B_T, fill).max()


def masked_min(values_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """Min over response tokens (scalar); +inf when the mask is empty."""
    fill = torch.full_like(values_B_T, float("inf"))
    return torch.where(mask_B_T, values_B_T, fill).min()


def masked_fraction(condition_B_T: Tensor, mask_B_T: Tensor, dtype: torch.dtype) -> Tensor:
    """Fraction of response tokens where ``condition`` holds (scalar)."""
    count = mask_B_T.sum().to(dtype).clamp_min(1.0)
    return (condition_B_T & mask_B_T).sum().to(dtype) / count


def broadcast_rows(values_B: Tensor, like_B_T: Tensor) -> Tensor:
    """Repeat one value per row over the token axis."""
    return values_B.unsqueeze(-1).expand_as(like_B_T)
