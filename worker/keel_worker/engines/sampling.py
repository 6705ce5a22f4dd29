"""Token sampling from raw logits, returning the μ logprob of each sampled token.

Owns the sampling convention every engine shares: the logprob of token y is
log softmax(logits / T)[y] in float32, the full-vocabulary distribution the trainer recomputes;
top-p only restricts which tokens may be drawn (it does not renormalize the reported logprob, like
vLLM's raw logprobs). T = 0 means greedy decoding, reported under softmax(logits).
"""

from __future__ import annotations

import torch


def sample_tokens(
    logits_R_V: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; returns (tokens_R int64, logprobs_R float32)."""
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    logits_R_V = logits_R_V.float()
    if temperature == 0:
        tokens_R = logits_R_V.argmax(dim=-1)
        logprobs_R_V = torch.log_softmax(logits_R_V, dim=-1)
    else:
        logprobs_R_V = torch.log_softmax(logits_R_V / temperature, dim=-1)
        tokens_R = _draw(logprobs_R_V, top_p, generator)
    return tokens_R, logprobs_R_V.gather(-1, tokens_R[:, None]).squeeze(-1)


def _draw(logprobs_R_V: torch.Tensor, top_p: float, generator: torch.Generator | None):
    """Inverse-CDF draw, one uniform per row (torch.multinomial: ~50 ms for 64×49k on a CPU)."""
    probs_R_V = logprobs_R_V.exp()
    if top_p < 1.0:
        sorted_R_V, order_R_V = probs_R_V.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside_R_V = sorted_R_V.cumsum(dim=-1) - sorted_R_V >= top_p
        sorted_R_V = sorted_R_V.masked_fill(outside_R_V, 0.0)
        probs_R_V = torch.zeros_like(probs_R_V).scatter(-1, order_R_V, sorted_R_V)
    cdf_R_V = probs_R_V.cumsum(dim=-1)
    # u in (0, 1] scaled by the total mass: a zero-probability token (a flat CDF step) is never hit.
    uniform_R_1 = 1.0 - torch.rand((cdf_R_V.shape[0], 1), generator=generator)
    tokens_R = torch.searchsorted(cdf_R_V, uniform_R_1 * cdf_R_V[:, -1:]).squeeze(-1)
    return tokens_R.clamp(max=cdf_R_V.shape[-1] - 1)
