"""Typed containers passed into and out of every objective (shapes in the field names).

Notation follows docs/concepts/algorithm.md §1.1: π_θ is the policy being optimized (training
engine), π_old the rollout parameters re-evaluated in the training engine, μ_old the inference
engine that sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class PolicyBatch:
    """One (micro-)batch of responses, right-aligned to the training forward's token positions.

    Fields:
        logprobs_B_T: log π_θ(y_t|·) of the sampled tokens; carries the gradient.
        old_logprobs_B_T: log π_old(y_t|·), recomputed by the trainer at θ_old (no gradient used).
        rollout_logprobs_B_T: log μ_old(y_t|·), recorded by the inference engine at sampling.
        advantages_B: Â(x, y), one per response, shared by all its tokens (paper Eq. 7).
        mask_B_T: bool, True at response tokens only (prompt and padding are False).
        token_advantages_B_T: optional Â per token, which replaces ``advantages_B`` where given:
            Tinker's data carry one advantage per token (the cookbook folds a KL penalty into
            them), and the objectives read Â only through :attr:`advantages_B_T`.
    """

    logprobs_B_T: Tensor
    old_logprobs_B_T: Tensor
    rollout_logprobs_B_T: Tensor
    advantages_B: Tensor
    mask_B_T: Tensor
    token_advantages_B_T: Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.logprobs_B_T.shape
        if self.logprobs_B_T.dim() != 2:
            raise ValueError(f"logprobs_B_T must be 2-D [B, T], got {tuple(shape)}")
        same_shape = ["old_logprobs_B_T", "rollout_logprobs_B_T", "mask_B_T"]
        if self.token_advantages_B_T is not None:
            same_shape.append("token_advantages_B_T")
        for name in same_shape:
            other = getattr(self, name).shape
            if other != shape:
                raise ValueError(f"{name} has shape {tuple(other)}, expected {tuple(shape)}")
        if self.advantages_B.shape != shape[:1]:
            raise ValueError(
                f"advantages_B has shape {tuple(self.advantages_B.shape)}, expected ({shape[0]},)"
            )
        if self.mask_B_T.dtype != torch.bool:
            raise ValueError(f"mask_B_T must be bool, got {self.mask_B_T.dtype}")

    @property
    def advantages_B_T(self) -> Tensor:
        """Â per token: ``token_advantages_B_T`` when given, else ``advantages_B`` broadcast over
        tokens (the same value for every token of a response)."""
        if self.token_advantages_B_T is not None:
            return self.token_advantages_B_T
        return self.advantages_B.unsqueeze(-1).expand_as(self.logprobs_B_T)


@dataclass(frozen=True)
class LossOutput:
    """What an objective returns.

    Fields:
        loss: scalar to call ``backward()`` on; already divided by the global normalizer, so the
            losses of the micro-batches of one mini-batch add up to the mini-batch loss.
        metrics: detached scalar tensors keyed ``area/name``; the caller calls ``.item()`` once
            per step (core never synchronizes with the device).
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
