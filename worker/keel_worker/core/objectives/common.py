"""Steps shared by several objectives: the training–inference IS factor, the PPO-clip loss on a
given log-ratio (token-level for GRPO & co., sequence-level for GSPO) and the final reduction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from keel_worker.core.aggregation import aggregate
from keel_worker.core.clipping import clip_metrics, ppo_clip_surrogate
from keel_worker.core.is_correction import is_weights
from keel_worker.core.masked import masked_log_ratio, safe_exp
from keel_worker.core.types import LossOutput, PolicyBatch


def train_infer_weights(
    batch: PolicyBatch, correction: Mapping[str, Any] | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """sg[correction(π_old/μ_old)] per token: the training–inference factor of Eq. 5.

    ``None`` drops the factor (weight 1), which is what GRPO, CISPO, GSPO and DAPO do as
    originally written (paper App. A difference (1)). Padding gets weight 0.
    """
    mask_B_T = batch.mask_B_T
    if correction is None:
        return mask_B_T.to(batch.logprobs_B_T.dtype), {}
    log_ratio_B_T = masked_log_ratio(
        batch.old_logprobs_B_T.detach(), batch.rollout_logprobs_B_T.detach(), mask_B_T
    )
    return is_weights(log_ratio_B_T, mask_B_T, correction)


def finish(
    per_token_B_T: Tensor,
    batch: PolicyBatch,
    *,
    loss_agg: str,
    normalizer: float | Tensor,
    metrics: dict[str, Tensor],
) -> LossOutput:
    """Aggregate the per-token loss and package it with detached metrics."""
    loss = aggregate(per_token_B_T, batch.mask_B_T, loss_agg=loss_agg, normalizer=normalizer)
    return LossOutput(loss=loss, metrics={key: value.detach() for key, value in metrics.items()})


def ppo_clip_loss(
    batch: PolicyBatch,
    log_ratio_B_T: Tensor,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    """ℓ_t = −sg[v_t] · min(r_t Â, clip(r_t, 1−ε_low, 1+ε_high) Â), r_t = exp(log_ratio_B_T).

    ``log_ratio_B_T`` keeps its gradient: the min/clip itself decides which tokens are
    "clipped". v_t is the optional training–inference factor of :func:`train_infer_weights`.
    """
    mask_B_T = batch.mask_B_T
    advantages_B_T = batch.advantages_B_T
    # Stop-gradient: the training–inference weight is a constant per token.
    ti_weight_B_T, metrics = train_infer_weights(batch, is_correction)
    metrics |= clip_metrics(
        log_ratio_B_T, advantages_B_T, mask_B_T, eps_low=eps_low, eps_high=eps_high
    )
    surrogate_B_T = ppo_clip_surrogate(
        safe_exp(log_ratio_B_T), advantages_B_T, eps_low=eps_low, eps_high=eps_high
    )
    per_token_B_T = -ti_weight_B_T * surrogate_B_T
    return finish(per_token_B_T, batch, loss_agg=loss_agg, normalizer=normalizer, metrics=metrics)
