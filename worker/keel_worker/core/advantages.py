"""Group-relative advantages from rewards shaped [P prompts, G responses per prompt].

- ``group_mean`` (MiniRL, Eq. 7): Â_i = R_i − mean_j R_j (the group mean includes the sample
  itself, the GRPO convention; docs/concepts/algorithm.md §3.1 item 1). No std division.
- ``mean_std`` (GRPO/CISPO/GSPO, App. A): Â_i = (R_i − mean_j R_j) / (std_j R_j + STD_EPS), with
  the unbiased (G−1) std as in verl and TRL.
- ``rloo`` (leave-one-out): Â_i = R_i − mean_{j≠i} R_j = G/(G−1) · (R_i − mean_j R_j).

A zero-variance group (all rewards equal, e.g. all 0 or all 1) has Â = 0 for every member in
every mode; such groups are reported so the caller can count or drop them
(docs/concepts/algorithm.md §10.1).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

AdvantageMode = Literal["group_mean", "mean_std", "rloo"]
ADVANTAGE_MODES: tuple[str, ...] = get_args(AdvantageMode)

# Numerical guard of the std division only; zero-variance groups are zeroed explicitly anyway.
STD_EPS = 1e-6


def compute_advantages(rewards_P_G: Tensor, *, mode: str) -> tuple[Tensor, Tensor]:
    """Return (advantages_P_G, zero_variance_P) for ``mode`` in ADVANTAGE_MODES."""
    if rewards_P_G.dim() != 2:
        raise ValueError(f"rewards_P_G must be 2-D [P, G], got {tuple(rewards_P_G.shape)}")
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"unknown advantage mode {mode!r}; expected one of {ADVANTAGE_MODES}")
    group_size = rewards_P_G.shape[1]
    if mode in ("mean_std", "rloo") and group_size < 2:
        raise ValueError(f"advantage mode {mode!r} needs a group size of at least 2")
    zero_variance_P = (rewards_P_G == rewards_P_G[:, :1]).all(dim=1)
    centered_P_G = rewards_P_G - rewards_P_G.mean(dim=1, keepdim=True)
    if mode == "mean_std":
        std_P_1 = rewards_P_G.std(dim=1, keepdim=True)
        advantages_P_G = centered_P_G / (std_P_1 + STD_EPS)
    elif mode == "rloo":
        advantages_P_G = centered_P_G * (group_size / (group_size - 1))
    else:
        advantages_P_G = centered_P_G
    # Exact zeros for constant groups (the mean may differ from the rewards by rounding).
    advantages_P_G = torch.where(
        zero_variance_P.unsqueeze(1), torch.zeros_like(advantages_P_G), advantages_P_G
    )
    return advantages_P_G, zero_variance_P
