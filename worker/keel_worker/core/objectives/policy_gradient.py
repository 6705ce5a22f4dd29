"""Plain policy-gradient objectives: REINFORCE (no IS weight) and CISPO (clipped IS weight)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from keel_worker.core.clipping import clip_metrics
from keel_worker.core.masked import masked_log_ratio, safe_exp
from keel_worker.core.objectives.common import finish, train_infer_weights
from keel_worker.core.objectives.registry import register
from keel_worker.core.types import LossOutput, PolicyBatch


@register("reinforce")
def reinforce(batch: PolicyBatch, *, normalizer: float | Tensor, loss_agg: str) -> LossOutput:
    """ℓ_t = −Â · log π_θ(y_t|·): Eq. 4 with the IS weight set to 1.

    This is the paper's "MiniRL w/o train-infer IS" ablation (docs/concepts/algorithm.md §8.8; exact
    on-policy, where r_t ≡ 1), the variant that collapses quickly in the paper's Fig. 1.
    """
    per_token_B_T = -batch.advantages_B_T * batch.logprobs_B_T
    return finish(per_token_B_T, batch, loss_agg=loss_agg, normalizer=normalizer, metrics={})


@register("cispo")
def cispo(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    """CISPO (paper App. A; MiniMax-M1 Eq. 4–6; docs/concepts/algorithm.md §7, §8.5).

        ℓ_t = −sg[clip(r_t, 1−ε_low, 1+ε_high)] · Â · log π_θ(y_t|·),   r_t = π_θ/π_old

    The clipped weight still multiplies ∇log π_θ: no token loses its gradient (the paper's
    criticism, App. A difference (3)). An optional training–inference factor
    sg[correction(π_old/μ_old)] multiplies each term.
    """
    mask_B_T = batch.mask_B_T
    advantages_B_T = batch.advantages_B_T
    ti_weight_B_T, metrics = train_infer_weights(batch, is_correction)
    log_ratio_B_T = masked_log_ratio(
        batch.logprobs_B_T.detach(), batch.old_logprobs_B_T.detach(), mask_B_T
    )
    metrics |= clip_metrics(
        log_ratio_B_T, advantages_B_T, mask_B_T, eps_low=eps_low, eps_high=eps_high
    )
    # Stop-gradient: the clipped ratio is a constant weight on ∇log π_θ.
    clipped_B_T = safe_exp(log_ratio_B_T).clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token_B_T = -(ti_weight_B_T * clipped_B_T * advantages_B_T) * batch.logprobs_B_T
    return finish(per_token_B_T, batch, loss_agg=loss_agg, normalizer=normalizer, metrics=metrics)
