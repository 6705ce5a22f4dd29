"""DPPO: trust-region masks on a divergence from the rollout policy μ
(docs/concepts/algorithm.md §8.9).

Qi et al., "Rethinking the Trust Region in LLM RL" (arXiv 2602.04879), Binary-TV and Binary-KL:

    ℓ_t = −M_t · sg[min(π_θ/μ_old, C)] · Â · log π_θ(y_t|·)     aggregated by ``loss_agg``

M_t is :func:`~keel_worker.core.clipping.binary_tv_mask` or
:func:`~keel_worker.core.clipping.binary_kl_mask` on p = π_θ(y_t) and q = μ_old(y_t). MiniRL
anchors its mask on the recomputed π_old; here the mask and the IS weight are both anchored on
μ, the policy that sampled (DPPO's critique: a π_old anchor does not bound the training–inference
mismatch), and π_old plays no part. Only log π_θ carries gradient: Σ_t M_t · w_t · Â · ∇log π_θ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from keel_worker.core.clipping import binary_kl_mask, binary_tv_mask, divergence_metrics
from keel_worker.core.is_correction import token_truncate, weight_metrics
from keel_worker.core.masked import masked_log_ratio, zero_padding
from keel_worker.core.objectives.common import finish
from keel_worker.core.objectives.registry import register
from keel_worker.core.types import LossOutput, PolicyBatch


def _detached_logprobs(batch: PolicyBatch) -> tuple[Tensor, Tensor]:
    """(log π_θ, log μ_old), detached and 0 at padding: the inputs of the mask and the weight."""
    mask_B_T = batch.mask_B_T
    logprobs_B_T = zero_padding(batch.logprobs_B_T.detach(), mask_B_T)
    rollout_B_T = zero_padding(batch.rollout_logprobs_B_T.detach(), mask_B_T)
    return logprobs_B_T, rollout_B_T


TRUST_REGIONS: dict[str, Callable[..., Tensor]] = {"tv": binary_tv_mask, "kl": binary_kl_mask}


def dppo(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    divergence: str,
    delta_low: float,
    delta_high: float,
    is_cap: float,
    loss_agg: str,
) -> LossOutput:
    """−M_t · sg[min(π_θ/μ_old, C)] · Â · log π_θ, M_t the Binary-TV (``divergence="tv"``:
    drop Â > 0 tokens with p − q > δ_high, Â < 0 ones with p − q < −δ_low) or Binary-KL mask
    (``"kl"``: drop when D = q·log(q/p) + (1−q)·log((1−q)/(1−p)), the KL between the Bernoulli
    distributions "the sampled token / any other token", exceeds δ and p moved the way Â pushes).
    """
    if divergence not in TRUST_REGIONS:
        raise ValueError(f"divergence must be one of {sorted(TRUST_REGIONS)}, got {divergence!r}")
    trust_region = TRUST_REGIONS[divergence]
    mask_B_T = batch.mask_B_T
    advantages_B_T = batch.advantages_B_T
    logprobs_B_T, rollout_B_T = _detached_logprobs(batch)
    # Stop-gradient: the mask and the truncated IS weight are computed from detached log-probs.
    keep_B_T = trust_region(
        logprobs_B_T, rollout_B_T, advantages_B_T, delta_low=delta_low, delta_high=delta_high
    )
    raw_B_T, weight_B_T = token_truncate(
        masked_log_ratio(logprobs_B_T, rollout_B_T, mask_B_T), mask_B_T, cap=is_cap
    )
    metrics = weight_metrics(raw_B_T, weight_B_T, mask_B_T)
    metrics |= divergence_metrics(logprobs_B_T, rollout_B_T, keep_B_T, advantages_B_T, mask_B_T)
    coef_B_T = torch.where(keep_B_T, weight_B_T * advantages_B_T, torch.zeros_like(weight_B_T))
    per_token_B_T = -coef_B_T * batch.logprobs_B_T
    return finish(per_token_B_T, batch, loss_agg=loss_agg, normalizer=normalizer, metrics=metrics)


# One loss, two registered names: the wire model of each fixes `divergence`.
register("dppo_tv")(dppo)
register("dppo_kl")(dppo)
