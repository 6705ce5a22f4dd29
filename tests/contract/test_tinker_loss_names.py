"""Contract: the loss names the API accepts on a Tinker forward_backward (it cannot import the
worker) are Tinker's built-ins plus exactly the objectives the worker registers."""

from __future__ import annotations

import typing

from keel.types.tinker import TINKER_LOSSES, TinkerBuiltinLoss
from keel_worker.core.objectives import OBJECTIVES


def test_the_api_accepts_the_builtins_and_every_registered_objective():
    builtins = set(typing.get_args(TinkerBuiltinLoss))
    assert builtins == {"cross_entropy", "importance_sampling", "ppo", "cispo", "dro"}
    assert set(TINKER_LOSSES) == builtins | set(OBJECTIVES)
