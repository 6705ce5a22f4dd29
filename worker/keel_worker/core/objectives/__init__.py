"""Policy objectives registered by name: ``OBJECTIVES[name](batch, *, normalizer, **hyper)``.

Every objective is a pure function of a :class:`~keel_worker.core.types.PolicyBatch` returning a
:class:`~keel_worker.core.types.LossOutput`. Hyper-parameters are keyword-only without defaults;
the defaults and the keyword names live on the wire models of ``keel.types.algorithm`` (a
contract test keeps the two equal). Importing this package registers every objective.
"""

from keel_worker.core.objectives import dppo, minirl, policy_gradient, ppo, sequence
from keel_worker.core.objectives.registry import OBJECTIVES, Objective, register

__all__ = [
    "OBJECTIVES",
    "Objective",
    "dppo",
    "minirl",
    "policy_gradient",
    "ppo",
    "register",
    "sequence",
]
