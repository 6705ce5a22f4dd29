"""Shared builders for the core math tests (float64 so hand-computed values match to 1e-12)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from keel_worker.core.types import PolicyBatch

PAD = float("-inf")  # log(0) at padding: the objectives must never let it reach a sum or gradient


def batch_from_probs(
    probs: list[list[float | None]],
    old_probs: list[list[float | None]],
    rollout_probs: list[list[float | None]],
    advantages: list[float],
    *,
    requires_grad_all: bool = False,
) -> PolicyBatch:
    """A PolicyBatch from per-token PROBABILITIES (None = padding); logprobs = log(prob)."""

    def logs(rows: list[list[float | None]]) -> torch.Tensor:
        return torch.tensor(
            [[PAD if p is None else math.log(p) for p in row] for row in rows],
            dtype=torch.float64,
        )

    mask = torch.tensor([[p is not None for p in row] for row in probs])
    return PolicyBatch(
        logprobs_B_T=logs(probs).requires_grad_(True),
        old_logprobs_B_T=logs(old_probs).requires_grad_(requires_grad_all),
        rollout_logprobs_B_T=logs(rollout_probs).requires_grad_(requires_grad_all),
        advantages_B=torch.tensor(advantages, dtype=torch.float64),
        mask_B_T=mask,
    )


# The reference batch of the hand-computed tests. Row 0: three tokens, Â = +1; row 1: two tokens
# and one padding position, Â = −0.5.
#   token         π_θ    π_old   μ_old    r = π_θ/π_old   π_θ/μ_old   π_old/μ_old
#   (0,0)         0.60   0.50    0.40     1.2             1.5         1.25
#   (0,1)         0.55   0.50    0.05     1.1             11          10
#   (0,2)         0.90   0.60    0.60     1.5             1.5         1.0
#   (1,0)         0.30   0.50    0.50     0.6             0.6         1.0
#   (1,1)         0.80   0.40    0.20     2.0             4.0         2.0
REF_PROBS = [[0.60, 0.55, 0.90], [0.30, 0.80, None]]
REF_OLD = [[0.50, 0.50, 0.60], [0.50, 0.40, None]]
REF_ROLLOUT = [[0.40, 0.05, 0.60], [0.50, 0.20, None]]
REF_ADV = [1.0, -0.5]


@pytest.fixture
def ref_batch() -> Callable[..., PolicyBatch]:
    """Factory for the reference batch above (a fresh leaf tensor each call)."""

    def make(*, requires_grad_all: bool = False) -> PolicyBatch:
        return batch_from_probs(
            REF_PROBS, REF_OLD, REF_ROLLOUT, REF_ADV, requires_grad_all=requires_grad_all
        )

    return make


def _random_batch(seed: int, *, rows: int = 6, tokens: int = 7, spread: float = 0.4) -> PolicyBatch:
    """Random log-probs near each other, ragged right padding, advantages of both signs."""
    gen = torch.Generator().manual_seed(seed)
    base = -torch.rand(rows, tokens, generator=gen, dtype=torch.float64) * 2.0 - 0.05
    old = base + spread * torch.randn(rows, tokens, generator=gen, dtype=torch.float64)
    rollout = old + spread * torch.randn(rows, tokens, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, tokens + 1, (rows,), generator=gen)
    mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)
    advantages = torch.randn(rows, generator=gen, dtype=torch.float64)
    return PolicyBatch(
        logprobs_B_T=base.clone().requires_grad_(True),
        old_logprobs_B_T=old.clamp(max=0.0),
        rollout_logprobs_B_T=rollout.clamp(max=0.0),
        advantages_B=advantages,
        mask_B_T=mask,
    )


@pytest.fixture
def random_batch() -> Callable[..., PolicyBatch]:
    """Factory: ``random_batch(seed, rows=, tokens=, spread=)``."""
    return _random_batch


@pytest.fixture
def probs_batch() -> Callable[..., PolicyBatch]:
    """Factory: ``probs_batch(probs, old_probs, rollout_probs, advantages)``."""
    return batch_from_probs
