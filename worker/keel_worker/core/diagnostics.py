"""Step diagnostics (docs/concepts/algorithm.md §4, §10): detached tensors, no ``.item()``.

- :func:`mismatch_metrics`: the training–inference gap between π_old (training engine) and μ_old
  (inference engine) on the sampled tokens: KL(μ_old‖π_old) with the k1 estimator the paper plots
  (mean of log μ − log π_old) and the non-negative k3 estimator (mean of e^Δ − Δ − 1 with
  Δ = log π_old − log μ), |Δp| in probability space, and the Pearson correlation of the two
  engines' token probabilities (MiniMax-M1's diagnostic).
- :func:`entropy_from_logits`: token entropy of the full vocabulary distribution, chunked over
  positions so at most ``chunk_size × V`` float32 values are alive at once.
- :func:`routing_disagreement`: how often two routings of the same tokens pick different top-k
  expert SETS, per MoE layer and with any layer differing.

IS-weight statistics live in ``is_correction.weight_metrics`` and clip statistics in
``clipping.clip_metrics``; the objectives return both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from keel.types import metric_names as metric
from keel_worker.core.masked import (
    masked_log_ratio,
    masked_max,
    masked_mean,
    safe_exp,
    zero_padding,
)


@torch.no_grad()
def mismatch_metrics(
    old_logprobs_B_T: Tensor, rollout_logprobs_B_T: Tensor, mask_B_T: Tensor
) -> dict[str, Tensor]:
    """Training–inference mismatch on response tokens (Pearson is NaN if a side is constant)."""
    delta_B_T = masked_log_ratio(old_logprobs_B_T, rollout_logprobs_B_T, mask_B_T)
    p_old_B_T = zero_padding(torch.exp(old_logprobs_B_T), mask_B_T)
    p_mu_B_T = zero_padding(torch.exp(rollout_logprobs_B_T), mask_B_T)
    abs_diff_B_T = (p_old_B_T - p_mu_B_T).abs()
    diff_mean = masked_mean(abs_diff_B_T, mask_B_T)
    return {
        metric.MISMATCH_KL_K1: masked_mean(-delta_B_T, mask_B_T),
        metric.MISMATCH_KL_K3: masked_mean(safe_exp(delta_B_T) - delta_B_T - 1.0, mask_B_T),
        metric.MISMATCH_PROB_DIFF_MEAN: diff_mean,
        metric.MISMATCH_PROB_DIFF_MAX: masked_max(abs_diff_B_T, mask_B_T),
        metric.MISMATCH_PROB_DIFF_STD: masked_mean(
            (abs_diff_B_T - diff_mean).square(), mask_B_T
        ).sqrt(),
        metric.MISMATCH_PROB_PEARSON: _pearson(p_old_B_T, p_mu_B_T, mask_B_T),
    }


def _pearson(x_B_T: Tensor, y_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    dx_B_T = zero_padding(x_B_T - masked_mean(x_B_T, mask_B_T), mask_B_T)
    dy_B_T = zero_padding(y_B_T - masked_mean(y_B_T, mask_B_T), mask_B_T)
    return (dx_B_T * dy_B_T).sum() / torch.sqrt(dx_B_T.square().sum() * dy_B_T.square().sum())


@torch.no_grad()
def entropy_from_logits(
    logits_B_T_V: Tensor, mask_B_T: Tensor, *, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """(Σ entropy, token count) over response tokens; divide after summing over micro-batches.

    H_t = −Σ_w π(w|·) log π(w|·) = logsumexp(z) − Σ_w softmax(z)_w z_w, computed in at least
    float32 whatever the logits' dtype. ``logits_B_T_V[b, t]`` must be the distribution that
    produced token t (the caller shifts). Padding is processed and discarded, which avoids the
    host synchronization that selecting the response positions first would need.
    """
    vocab = logits_B_T_V.shape[-1]
    flat_N_V = logits_B_T_V.reshape(-1, vocab)
    flat_mask_N = mask_B_T.reshape(-1)
    compute_dtype = torch.promote_types(logits_B_T_V.dtype, torch.float32)
    total = torch.zeros((), dtype=compute_dtype, device=logits_B_T_V.device)
    for start in range(0, flat_N_V.shape[0], chunk_size):
        logits_C_V = flat_N_V[start : start + chunk_size].to(compute_dtype)
        log_z_C = torch.logsumexp(logits_C_V, dim=-1)
        expected_logit_C = (torch.softmax(logits_C_V, dim=-1) * logits_C_V).sum(dim=-1)
        entropy_C = log_z_C - expected_logit_C
        keep_C = flat_mask_N[start : start + chunk_size]
        total = total + torch.where(keep_C, entropy_C, torch.zeros_like(entropy_C)).sum()
    return total, mask_B_T.sum().to(compute_dtype)


@torch.no_grad()
def routing_disagreement(
    routes_a_B_T_L_K: Tensor, routes_b_B_T_L_K: Tensor, mask_B_T: Tensor
) -> dict[str, Tensor]:
    """Fraction of masked tokens whose top-k expert set differs between two routings.

    The order inside the top-k is ignored (sets are compared). Returns ``per_layer_L`` (rate per
    MoE layer), ``any_layer`` (tokens with at least one differing layer; the R3 paper reports
    ~94% for inference vs training) and ``mean`` (over token × layer pairs).
    """
    if routes_a_B_T_L_K.shape != routes_b_B_T_L_K.shape:
        raise ValueError(
            f"route shapes differ: {tuple(routes_a_B_T_L_K.shape)} vs "
            f"{tuple(routes_b_B_T_L_K.shape)}"
        )
    sorted_a = routes_a_B_T_L_K.long().sort(dim=-1).values
    sorted_b = routes_b_B_T_L_K.long().sort(dim=-1).values
    differs_B_T_L = (sorted_a != sorted_b).any(dim=-1) & mask_B_T.unsqueeze(-1)
    count = mask_B_T.sum().to(torch.float32).clamp_min(1.0)
    per_layer_L = differs_B_T_L.sum(dim=(0, 1)).to(torch.float32) / count
    return {
        "per_layer_L": per_layer_L,
        "any_layer": differs_B_T_L.any(dim=-1).sum().to(torch.float32) / count,
        "mean": per_layer_L.mean(),
    }
