"""Loss aggregation: how per-token loss terms become one scalar (docs/concepts/algorithm.md §9.2).

Modes (the names of ``keel.types.algorithm.LossAggregation``):

- ``seq_mean_token_sum`` (MiniRL, paper Eq. 7): Σ_i Σ_t ℓ_{i,t} / N_resp. A plain sum over each
  response's tokens and a mean over responses: no length normalization.
- ``seq_mean_token_sum_norm`` (Dr. GRPO): Σ_i Σ_t ℓ_{i,t} / (N_resp · C) with C a FIXED
  constant (e.g. the max generation length); still no dependence on the batch's lengths.
- ``token_mean`` (DAPO / CISPO): Σ_i Σ_t ℓ_{i,t} / Σ_i |y_i|.
- ``seq_mean_token_mean`` (GRPO, paper App. A): Σ_i (1/|y_i|) Σ_t ℓ_{i,t} / N_resp.

The denominator is computed ONCE for the whole mini-batch by :func:`loss_normalizer` (summed over
ranks by the caller under data parallelism) and passed to every micro-batch. Every mode is then a
sum of per-row terms divided by that global constant, so the micro-batch losses add up exactly to
the mini-batch loss and the accumulated gradient does not depend on how the batch is split.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from keel_worker.core.masked import response_lengths, zero_padding

LossAggregation = Literal[
    "seq_mean_token_sum", "token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"
]
LOSS_AGGREGATIONS: tuple[str, ...] = get_args(LossAggregation)


def loss_normalizer(loss_agg: str, *, mask_B_T: Tensor, constant: float) -> Tensor:
    """The global denominator of ``loss_agg`` for the WHOLE mini-batch mask (0-dim float32).

    Args:
        loss_agg: one of LOSS_AGGREGATIONS.
        mask_B_T: bool response mask of the whole mini-batch (all micro-batches, this rank).
        constant: the fixed divisor C of ``seq_mean_token_sum_norm`` (Dr. GRPO uses the max
            generation length); must be > 0; the other modes do not use it.

    Rows without any response token are not counted as responses. The result is at least 1 so
    that an empty mini-batch yields a zero loss rather than NaN. It stays a tensor (no host
    synchronization); under data parallelism the caller all-reduces it before use.
    """
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")
    if not constant > 0:
        raise ValueError(f"constant must be > 0, got {constant}")
    n_tokens = mask_B_T.sum().to(torch.float32)
    n_responses = mask_B_T.any(dim=-1).sum().to(torch.float32)
    if loss_agg == "token_mean":
        count = n_tokens
    elif loss_agg == "seq_mean_token_sum_norm":
        count = n_responses * constant
    else:
        count = n_responses
    return count.clamp_min(1.0).detach()


def aggregate(
    per_token_B_T: Tensor, mask_B_T: Tensor, *, loss_agg: str, normalizer: float | Tensor
) -> Tensor:
    """Reduce per-token loss terms to a scalar with a global ``normalizer``.

    ``seq_mean_token_mean`` divides each row by its own length first (a per-row quantity, hence
    still micro-batch invariant); the other modes only differ in the normalizer.
    """
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")
    per_row_B = zero_padding(per_token_B_T, mask_B_T).sum(dim=-1)
    if loss_agg == "seq_mean_token_mean":
        per_row_B = per_row_B / response_lengths(mask_B_T, per_row_B.dtype).clamp_min(1.0)
    return per_row_B.sum() / normalizer
