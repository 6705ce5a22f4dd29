"""MiniRL (paper Eq. 7) and its ablations (docs/concepts/algorithm.md §3.1, §3.4).

    ℓ_t = −M_t · sg[w_t] · Â · log π_θ(y_t|·)        summed over tokens, mean over responses

- w_t, the token-level IS weight, by ``is_scope``:
  ``"full"`` (default, the literal reading of paper §4.2): w_t = correction(π_θ/μ_old), e.g. TIS
  min(π_θ/μ_old, 5); ``"train_infer"``: w_t = correction(π_old/μ_old) · π_θ/π_old, i.e. only the
  training–inference factor of Eq. 5 is corrected (verl's decoupled mode; docs/concepts/algorithm.md
  §9.1). ``is_correction=None`` drops the training–inference factor: w_t = π_θ/π_old (= 1
  on-policy), the paper's "w/o train-infer IS" ablation.
- M_t, the decoupled-PPO clip mask on r_t = π_θ/π_anchor, anchor π_old (MiniRL) or μ_old (the
  "bypass" anchor DPPO argues for, docs/concepts/algorithm.md §8.9); ``use_clip=False`` sets M_t ≡ 1
  (the "no clipping" ablation).
- ``length_norm=True`` divides each response's terms by |y| (the "+ length-norm" ablation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from keel_worker.core.clipping import clip_mask, clip_metrics
from keel_worker.core.is_correction import is_weights
from keel_worker.core.masked import masked_log_ratio, response_lengths, safe_exp
from keel_worker.core.objectives.common import finish
from keel_worker.core.objectives.registry import register
from keel_worker.core.types import LossOutput, PolicyBatch


def _is_weight(
    batch: PolicyBatch, correction: Mapping[str, Any] | None, is_scope: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """The detached token IS weight w_t of Eq. 7 for the chosen scope."""
    if is_scope not in ("full", "train_infer"):
        raise ValueError(f"is_scope must be 'full' or 'train_infer', got {is_scope!r}")
    mask_B_T = batch.mask_B_T
    logprobs_B_T = batch.logprobs_B_T.detach()
    old_B_T = batch.old_logprobs_B_T.detach()
    rollout_B_T = batch.rollout_logprobs_B_T.detach()
    staleness_B_T = safe_exp(masked_log_ratio(logprobs_B_T, old_B_T, mask_B_T))
    if correction is None:
        return staleness_B_T, {}
    if is_scope == "full":
        full_B_T = masked_log_ratio(logprobs_B_T, rollout_B_T, mask_B_T)
        return is_weights(full_B_T, mask_B_T, correction)
    train_infer_B_T = masked_log_ratio(old_B_T, rollout_B_T, mask_B_T)
    weight_B_T, metrics = is_weights(train_infer_B_T, mask_B_T, correction)
    return weight_B_T * staleness_B_T, metrics


def _anchor_logprobs(batch: PolicyBatch, clip_anchor: str) -> Tensor:
    if clip_anchor == "pi_old":
        return batch.old_logprobs_B_T.detach()
    if clip_anchor == "mu_old":
        return batch.rollout_logprobs_B_T.detach()
    raise ValueError(f"clip_anchor must be 'pi_old' or 'mu_old', got {clip_anchor!r}")


@register("minirl")
def minirl(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    use_clip: bool,
    clip_anchor: str,
    is_correction: Mapping[str, Any] | None,
    is_scope: str,
    length_norm: bool,
    loss_agg: str,
) -> LossOutput:
    """MiniRL loss, Eq. 7 (gradient Σ_t M_t · w_t · Â · ∇log π_θ)."""
    mask_B_T = batch.mask_B_T
    advantages_B_T = batch.advantages_B_T
    # Stop-gradient: the IS weight and the mask are constants; only log π_θ carries gradient.
    weight_B_T, metrics = _is_weight(batch, is_correction, is_scope)
    log_ratio_B_T = masked_log_ratio(
        batch.logprobs_B_T.detach(), _anchor_logprobs(batch, clip_anchor), mask_B_T
    )
    metrics |= clip_metrics(
        log_ratio_B_T, advantages_B_T, mask_B_T, eps_low=eps_low, eps_high=eps_high
    )
    if use_clip:
        keep_B_T = clip_mask(
            safe_exp(log_ratio_B_T), advantages_B_T, eps_low=eps_low, eps_high=eps_high
        )
    else:
        keep_B_T = torch.ones_like(mask_B_T)
    coef_B_T = torch.where(keep_B_T, weight_B_T * advantages_B_T, torch.zeros_like(weight_B_T))
    if length_norm:
        # Ablation only: the 1/|y| factor that breaks the first-order approximation
        # (docs/concepts/algorithm.md §1.3).
        lengths_B = response_lengths(mask_B_T, coef_B_T.dtype).clamp_min(1.0)
        coef_B_T = coef_B_T / lengths_B.unsqueeze(-1)
    per_token_B_T = -coef_B_T * batch.logprobs_B_T
    return finish(per_token_B_T, batch, loss_agg=loss_agg, normalizer=normalizer, metrics=metrics)
