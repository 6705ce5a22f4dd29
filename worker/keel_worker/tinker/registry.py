"""`loss_fn` name → loss: Tinker's built-ins first, then keel's objectives."""

from __future__ import annotations

from collections.abc import Mapping

from keel_worker.tinker.losses import BUILTIN_LOSSES, TinkerLoss
from keel_worker.tinker.objectives import KeelObjective, keel_objective_names, objective_of


def loss_names() -> list[str]:
    """Every `loss_fn` the resident model runs."""
    return sorted(BUILTIN_LOSSES) + keel_objective_names()


def resolve_loss(loss_fn: str, config: Mapping[str, float | str] | None) -> TinkerLoss:
    """The loss `loss_fn` names with `config` parsed; ValueError for an unknown name (listing the
    known ones) or a bad config."""
    config = config or {}
    if loss_fn in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[loss_fn](config)
    if objective_of(loss_fn) is not None:
        return KeelObjective(loss_fn, config)
    raise ValueError(f"unknown loss_fn {loss_fn!r}; known: {', '.join(loss_names())}")
