"""Token sampling from raw logits, returning the μ logprob of each sampled token.

Owns the sampling convention every engine shares: the logprob of token y is
log softmax(logits / T)[y] in float32, the full-vocabulary distribution the trainer recomputes;
top-k and top-p only restrict which tokens may be drawn (they do not renormalize the reported
logprob, like vLLM's raw logprobs), so the sampling distribution differs from the reported μ by
exactly the truncation. T = 0 means greedy decoding, reported under softmax(logits).
"""

from __future__ import annotations

import torch


def sample_tokens(
    logits_R_V: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    top_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; returns (tokens_R int64, logprobs_R float32)."""
    if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(
            f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, "
            f"{top_k}"
        )
    logits_R_V = logits_R_V.float()
    if temperature == 0:
        tokens_R = logits_R_V.argmax(dim=-1)
        logprobs_R_V = torch.log_softmax(logits_R_V, dim=-1)
    else:
        logprobs_R_V = torch.log_softmax(logits_R_V / temperature, dim=-1)
        tokens_R = _draw(truncate(logprobs_R_V.exp(), top_p=top_p, top_k=top_k), generator)
    return tokens_R, logprobs_R_V.gather(-1, tokens_R[:, None]).squeeze(-1)


def truncate(probs_R_V: torch.Tensor, *, top_p: float, top_k: int) -> torch.Tensor:
    """The unnormalized sampling weights after top-k (the k most likely; tokens tied with the
    k-th stay) then top-p (the smallest most-likely-first prefix of what is left whose mass
    reaches top_p of the remaining mass, the order vLLM applies them in)."""
    if 0 < top_k < probs_R_V.shape[-1]:
        kth_R_1 = probs_R_V.topk(top_k, dim=-1).values[:, -1:]
        probs_R_V = probs_R_V.masked_fill(probs_R_V < kth_R_1, 0.0)
    if top_p < 1.0:
        sorted_R_V, order_R_V = probs_R_V.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        total_R_1 = sorted_R_V.sum(dim=-1, keepdim=True)
        outside_R_V = sorted_R_V.cumsum(dim=-1) - sorted_R_V >= top_p * total_R_1
        sorted_R_V = sorted_R_V.masked_fill(outside_R_V, 0.0)
        probs_R_V = torch.zeros_like(probs_R_V).scatter(-1, order_R_V, sorted_R_V)
    return probs_R_V


def _draw(probs_R_V: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Inverse-CDF draw, one uniform per row (torch.multinomial: ~50 ms for 64×49k on a CPU)."""
    cdf_R_V = probs_R_V.cumsum(dim=-1)
    # u in (0, 1] scaled by the total mass: a zero-probability token (a flat CDF step) is never hit.
    uniform_R_1 = 1.0 - torch.rand((cdf_R_V.shape[0], 1), generator=generator)
    tokens_R = torch.searchsorted(cdf_R_V, uniform_R_1 * cdf_R_V[:, -1:]).squeeze(-1)
    return tokens_R.clamp(max=cdf_R_V.shape[-1] - 1)
