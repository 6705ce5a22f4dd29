"""PPO-clip objectives: GRPO, Dr. GRPO, DAPO and decoupled PPO with TIS, one function.

All four share the per-token term (to minimize)

    ℓ_t = −sg[v_t] · min(r_t Â, clip(r_t, 1−ε_low, 1+ε_high) Â),   r_t = π_θ/π_old,

where v_t = correction(π_old/μ_old) is the optional training–inference IS factor (1 when the
correction is None). Its gradient is v_t · M_t · r_t · Â · ∇log π_θ (docs/concepts/algorithm.md §3.1
item 4, "Equivalence"). They differ only in defaults (ε, aggregation, advantage, correction) kept in
``keel.types.algorithm``, so :func:`ppo_clip` is registered under each name (docs/house-style.md
rule 13; docs/concepts/algorithm.md §8.10):

- ``grpo`` (as the paper's App. A writes it): (1/G) Σ_i (1/|y_i|) Σ_t min(r Â, clip(r) Â); the
  1/|y_i| and 1/G factors are ``loss_agg="seq_mean_token_mean"``.
- ``dr_grpo``: the token sum divided by a constant, ``loss_agg="seq_mean_token_sum_norm"``.
- ``dapo``: clip-higher with token-level aggregation 1/Σ_i|y_i| (``token_mean``); dynamic
  sampling and overlong shaping act on rewards and batches, not on this loss.
- ``decoupled_ppo_tis`` (Yao et al.'s "PPO form" of TIS):
  E[min(π_old/μ_old, C) · ∇ min(r Â, clip(r, 1−ε_low, 1+ε_high) Â)].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from keel_worker.core.masked import masked_log_ratio
from keel_worker.core.objectives.common import ppo_clip_loss
from keel_worker.core.objectives.registry import register
from keel_worker.core.types import LossOutput, PolicyBatch

PPO_CLIP_NAMES = ("grpo", "dr_grpo", "dapo", "decoupled_ppo_tis")


def ppo_clip(
    batch: PolicyBatch,
    *,
    normalizer: float | Tensor,
    eps_low: float,
    eps_high: float,
    is_correction: Mapping[str, Any] | None,
    loss_agg: str,
) -> LossOutput:
    """Token-level PPO-clip on r_t = π_θ/π_old, times the optional train–infer weight."""
    # r_t keeps its gradient here: the min/clip itself decides which tokens are "clipped".
    log_ratio_B_T = masked_log_ratio(
        batch.logprobs_B_T, batch.old_logprobs_B_T.detach(), batch.mask_B_T
    )
    return ppo_clip_loss(
        batch,
        log_ratio_B_T,
        normalizer=normalizer,
        eps_low=eps_low,
        eps_high=eps_high,
        is_correction=is_correction,
        loss_agg=loss_agg,
    )


for _name in PPO_CLIP_NAMES:
    register(_name)(ppo_clip)
