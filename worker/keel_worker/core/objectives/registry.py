"""The name → objective function registry (names = ``keel.types.algorithm.ObjectiveName``)."""

from __future__ import annotations

from collections.abc import Callable

from keel_worker.core.types import LossOutput

Objective = Callable[..., LossOutput]

OBJECTIVES: dict[str, Objective] = {}


def register(name: str) -> Callable[[Objective], Objective]:
    """Register ``fn`` under ``name``; a second registration of a name is a bug."""

    def decorator(fn: Objective) -> Objective:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} registered twice")
        OBJECTIVES[name] = fn
        return fn

    return decorator
