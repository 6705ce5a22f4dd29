"""Sequence-ratio objectives: GSPO and GSPO-token (docs/concepts/algorithm.md §8.4).

    s_i = (π_θ(y_i|x)/π_old(y_i|x))^{1/|y_i|} = exp((1/|y_i|) Σ_t log(π_θ(y_{i,t})/π_old(y_{i,t})))
    GSPO:        J = (1/G) Σ_i min(s_i Â_i, clip(s_i, 1−ε_low, 1+ε_high) Â_i)
    GSPO-token:  s_{i,t} = sg[s_i] · π_θ(y_{i,t}) / sg[π_θ(y_{i,t})],
                 J = (1/G) Σ_i (1/|y_i|) Σ_t min(s_{i,t} Â_i, clip(s_{i,t}) Â_i)

GSPO's per-sequence term is written onto every token of the response, so its default
``loss_agg="seq_mean_token_mean"`` reproduces (1/G) Σ_i exactly; with one advantage per response
the two variants have the same loss and gradient (the GSPO paper's remark, tested). An optional
training–inference factor sg[correction(π_old/μ_old)] multiplies each token's term.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from keel_worker.core.masked import (
    LOG_RATIO_CLAMP,
    broadcast_rows,
    masked_log_ratio,
    response_lengths,
    zero_padding,
)
from keel_worker.core.objectives.common import ppo_clip_loss
from keel_worker.core.objectives.registry import register
from keel_worker.core.types import LossOutput, PolicyBatch


def _log_seq_ratio_B(batch: PolicyBatch) -> Tensor:
    """log s_i with gradient: the length-normalized sequence log-ratio, clamped for safety."""
    mask_B_T = batch.mask_B_T
    log_ratio_B_T = masked_log_ratio(batch.logprobs_B_T, batch.old_logprobs_B_T.detach(), mask_B_T)
    lengths_B = response_lengths(mask_B_T, log_ratio_B_T.dtype).clamp_min(1.0)
    return (log_ratio_B_T.sum(dim=-1) / lengths_B).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@register("gspo")
def gspo(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    """GSPO: PPO-clip on the length-normalized sequence ratio s_i (with gradient)."""
    log_ratio_B_T = broadcast_rows(_log_seq_ratio_B(batch), batch.logprobs_B_T)
    return ppo_clip_loss(
        batch,
        log_ratio_B_T,
        normalizer=normalizer,
        eps_low=eps_low,
        eps_high=eps_high,
        is_correction=is_correction,
        loss_agg=loss_agg,
    )


@register("gspo_token")
def gspo_token(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    """GSPO-token: value s_i per token, gradient through log π_θ(y_{i,t}) only."""
    # Stop-gradient: the sequence ratio is a constant; log π_θ − sg[log π_θ] is 0 in value and
    # carries the token's own gradient.
    log_seq_B_T = broadcast_rows(_log_seq_ratio_B(batch).detach(), batch.logprobs_B_T)
    logprobs_B_T = zero_padding(batch.logprobs_B_T, batch.mask_B_T)
    log_ratio_B_T = log_seq_B_T + (logprobs_B_T - logprobs_B_T.detach())
    return ppo_clip_loss(
        batch,
        log_ratio_B_T,
        normalizer=normalizer,
        eps_low=eps_low,
        eps_high=eps_high,
        is_correction=is_correction,
        loss_agg=loss_agg,
    )
