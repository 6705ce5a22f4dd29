"""PPO-clip objectives: GRPO, Dr. GRPO, DAPO and decoupled PPO with TIS.

All four share the per-token term (to minimize)

    ℓ_t = −sg[v_t] · min(r_t Â, clip(r_t, 1−ε_low, 1+ε_high) Â),   r_t = π_θ/π_old,

where v_t = correction(π_old/μ_old) is the optional training–inference IS factor (1 when the
correction is None). Its gradient is v_t · M_t · r_t · Â · ∇log π_θ (§3.1 item 4, "Equivalence").
They differ in defaults (ε, aggregation, advantage, correction) kept in ``keel.types.algorithm``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from keel_worker.core.clipping import clip_metrics, ppo_clip_surrogate
from keel_worker.core.masked import masked_log_ratio, safe_exp
from keel_worker.core.objectives.common import finish, train_infer_weights
from keel_worker.core.objectives.registry import register
from keel_worker.core.types import LossOutput, PolicyBatch


def _ppo_clip_loss(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    mask_B_T = batch.mask_B_T
    advantages_B_T = batch.advantages_B_T
    # Stop-gradient: the training–inference weight is a constant per token.
    ti_weight_B_T, metrics = train_infer_weights(batch, is_correction)
    # r_t keeps its gradient here: the min/clip itself decides which tokens are "clipped".
    log_ratio_B_T = masked_log_ratio(batch.logprobs_B_T, batch.old_logprobs_B_T.detach(), mask_B_T)
    metrics |= clip_metrics(
        log_ratio_B_T, advantages_B_T, mask_B_T, eps_low=eps_low, eps_high=eps_high
    )
    surrogate_B_T = ppo_clip_surrogate(
        safe_exp(log_ratio_B_T), advantages_B_T, eps_low=eps_low, eps_high=eps_high
    )
    per_token_B_T = -ti_weight_B_T * surrogate_B_T
    return finish(per_token_B_T, batch, loss_agg=loss_agg, normalizer=normalizer, metrics=metrics)


@register("grpo")
def grpo(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    """GRPO as written in paper App. A (§7): (1/G) Σ_i (1/|y_i|) Σ_t min(r Â, clip(r) Â).

    The 1/|y_i| and 1/G factors come from ``loss_agg="seq_mean_token_mean"`` (its default).
    """
    return _ppo_clip_loss(
        batch,
        normalizer=normalizer,
        eps_low=eps_low,
        eps_high=eps_high,
        is_correction=is_correction,
        loss_agg=loss_agg,
    )


@register("dr_grpo")
def dr_grpo(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    """Dr. GRPO (§8.6): the PPO-clip sum over tokens divided by a constant, no 1/|y_i|.

    The constant divisor comes from ``loss_agg="seq_mean_token_sum_norm"`` (its default).
    """
    return _ppo_clip_loss(
        batch,
        normalizer=normalizer,
        eps_low=eps_low,
        eps_high=eps_high,
        is_correction=is_correction,
        loss_agg=loss_agg,
    )


@register("dapo")
def dapo(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    """DAPO (§8.7): clip-higher PPO with token-level aggregation 1/Σ_i|y_i|.

    Dynamic sampling and overlong reward shaping act on rewards and batches, not on this loss.
    """
    return _ppo_clip_loss(
        batch,
        normalizer=normalizer,
        eps_low=eps_low,
        eps_high=eps_high,
        is_correction=is_correction,
        loss_agg=loss_agg,
    )


@register("decoupled_ppo_tis")
def decoupled_ppo_tis(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    """Decoupled PPO with TIS (Yao et al., §8.1 "PPO form"):

    E[ min(π_old/μ_old, C) · ∇ min(r Â, clip(r, 1−ε_low, 1+ε_high) Â) ],  r = π_θ/π_old.
    """
    return _ppo_clip_loss(
        batch,
        normalizer=normalizer,
        eps_low=eps_low,
        eps_high=eps_high,
        is_correction=is_correction,
        loss_agg=loss_agg,
    )
