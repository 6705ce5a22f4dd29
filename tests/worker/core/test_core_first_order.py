"""The first-order approximation of paper §2.3 (Eq. 1–4) on a small autoregressive policy.

With μ = π_old (no training–inference gap) and Â fixed per response:
    sequence-level IS objective  J_seq(θ)   = mean_i [ Π_t (π_θ/μ)(y_{i,t}) · Â_i ]       (Eq. 1)
    token-level surrogate        J_token(θ) = mean_i [ Σ_t (π_θ/μ)(y_{i,t}) · Â_i ]       (Eq. 3)
At θ = θ_old both gradients are mean_i Â_i Σ_t ∇log π_θ (exactly equal); as θ moves away the
δ_i δ_j terms the approximation drops grow, and the two gradients diverge. MiniRL's loss (Eq. 7,
no clipping, untruncated weight) must have exactly −∇J_token as its gradient.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from keel_worker.core.objectives import OBJECTIVES
from keel_worker.core.types import PolicyBatch

VOCAB, HIDDEN, ROWS, TOKENS = 6, 12, 24, 6


class TinyPolicy(nn.Module):
    """π_θ(y_t | y_<t): embedding → GRU → vocabulary logits, with a BOS token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB + 1, HIDDEN)
        self.rnn = nn.GRU(HIDDEN, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def step_logits(self, tokens_B_T: torch.Tensor) -> torch.Tensor:
        bos_B_1 = torch.full((tokens_B_T.shape[0], 1), VOCAB, dtype=torch.long)
        inputs_B_T = torch.cat([bos_B_1, tokens_B_T[:, :-1]], dim=1)
        hidden_B_T_H, _ = self.rnn(self.embed(inputs_B_T))
        return self.head(hidden_B_T_H)

    def logprobs(self, tokens_B_T: torch.Tensor) -> torch.Tensor:
        logp_B_T_V = torch.log_softmax(self.step_logits(tokens_B_T), dim=-1)
        return logp_B_T_V.gather(-1, tokens_B_T.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def sample(self, rows: int, gen: torch.Generator) -> torch.Tensor:
        tokens_B_T = torch.zeros(rows, TOKENS, dtype=torch.long)
        for t in range(TOKENS):
            probs_B_V = torch.softmax(self.step_logits(tokens_B_T)[:, t], dim=-1)
            tokens_B_T[:, t] = torch.multinomial(probs_B_V, 1, generator=gen).squeeze(-1)
        return tokens_B_T


def _setup():
    torch.manual_seed(0)
    policy = TinyPolicy().double()
    gen = torch.Generator().manual_seed(1)
    tokens = policy.sample(ROWS, gen)
    with torch.no_grad():
        mu_logprobs = policy.logprobs(tokens)  # μ = π_old: sampled and scored at θ_old
    rewards = torch.randn(ROWS, generator=gen, dtype=torch.float64)
    advantages = rewards - rewards.mean()
    direction = [
        torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in policy.parameters()
    ]
    norm = torch.sqrt(sum((d**2).sum() for d in direction))
    direction = [d / norm for d in direction]
    return policy, tokens, mu_logprobs, advantages, direction


def _flat_grad(policy: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def _minirl_grad(policy, tokens, mu_logprobs, advantages, **overrides) -> torch.Tensor:
    logprobs = policy.logprobs(tokens)
    batch = PolicyBatch(
        logprobs_B_T=logprobs,
        old_logprobs_B_T=mu_logprobs,
        rollout_logprobs_B_T=mu_logprobs,
        advantages_B=advantages,
        mask_B_T=torch.ones_like(tokens, dtype=torch.bool),
    )
    hyper = {
        "eps_low": 0.2,
        "eps_high": 0.27,
        "use_clip": False,
        "clip_anchor": "pi_old",
        "is_correction": {"mode": "token_truncate", "cap": float("inf")},
        "is_scope": "full",
        "length_norm": False,
        "loss_agg": "seq_mean_token_sum",
    } | overrides
    out = OBJECTIVES["minirl"](batch, normalizer=float(ROWS), **hyper)
    return _flat_grad(policy, out.loss)


def _sequence_grad(policy, tokens, mu_logprobs, advantages) -> torch.Tensor:
    # −∇J_seq with J_seq = mean_i exp(Σ_t log π_θ − log μ) · Â_i (Eq. 1–2, written directly).
    seq_ratio = torch.exp((policy.logprobs(tokens) - mu_logprobs).sum(dim=-1))
    return _flat_grad(policy, -(seq_ratio * advantages).mean())


def _token_grad(policy, tokens, mu_logprobs, advantages) -> torch.Tensor:
    # −∇J_token with J_token = mean_i Σ_t (π_θ/μ) · Â_i (Eq. 3, written directly).
    token_ratio = torch.exp(policy.logprobs(tokens) - mu_logprobs)
    return _flat_grad(policy, -(token_ratio.sum(dim=-1) * advantages).mean())


def _perturb(policy, direction, scale) -> None:
    with torch.no_grad():
        for p, d in zip(policy.parameters(), direction, strict=True):
            p.add_(scale * d)


def test_token_surrogate_equals_sequence_objective_at_theta_old():
    policy, tokens, mu, adv, _ = _setup()
    g_seq = _sequence_grad(policy, tokens, mu, adv)
    g_minirl = _minirl_grad(policy, tokens, mu, adv)
    torch.testing.assert_close(g_minirl, g_seq, rtol=1e-10, atol=1e-12)
    assert g_seq.norm() > 1e-3


def test_minirl_gradient_is_the_token_surrogate_gradient_away_from_theta_old():
    # Stop-gradient identity: sg[π/μ]·∇log π = ∇(π/μ), for any θ (Eq. 4 = ∇ of Eq. 3).
    policy, tokens, mu, adv, direction = _setup()
    _perturb(policy, direction, 0.7)
    torch.testing.assert_close(
        _minirl_grad(policy, tokens, mu, adv), _token_grad(policy, tokens, mu, adv)
    )


def test_cosine_similarity_falls_with_distance_from_theta_old():
    policy, tokens, mu, adv, direction = _setup()
    scales = [1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.5, 3.0]
    cosines, applied = [], 0.0
    for scale in scales:
        _perturb(policy, direction, scale - applied)
        applied = scale
        g_seq = _sequence_grad(policy, tokens, mu, adv)
        g_tok = _minirl_grad(policy, tokens, mu, adv)
        cosines.append(torch.nn.functional.cosine_similarity(g_seq, g_tok, dim=0).item())
    # → 1 as the perturbation shrinks: 1 − cos is second order in the distance (×10 in scale
    # gives ×100 in 1 − cos; measured 5.5e-11, 5.5e-9, 5.5e-7 for the first three scales) ...
    assert cosines[0] > 1 - 1e-9
    assert 50 < (1 - cosines[2]) / (1 - cosines[1]) < 200
    # ... and falls monotonically as it grows, clearly below 1 far from θ_old.
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(cosines)), cosines
    assert cosines[-1] < 0.98, cosines


def test_on_policy_minirl_with_defaults_is_reinforce():
    # docs/concepts/algorithm.md §3.2: at θ = θ_old and μ = π_old the weight is 1, nothing is
    # clipped or truncated, so MiniRL's gradient is REINFORCE's Σ_t Â ∇log π.
    policy, tokens, mu, adv, _ = _setup()
    g_minirl = _minirl_grad(
        policy, tokens, mu, adv, use_clip=True, is_correction={"mode": "token_truncate", "cap": 5.0}
    )
    logprobs = policy.logprobs(tokens)
    batch = PolicyBatch(logprobs, mu, mu, adv, torch.ones_like(tokens, dtype=torch.bool))
    out = OBJECTIVES["reinforce"](batch, normalizer=float(ROWS), loss_agg="seq_mean_token_sum")
    torch.testing.assert_close(g_minirl, _flat_grad(policy, out.loss))
