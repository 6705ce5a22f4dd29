"""Small, fast training configs on the built-in tiny models, shared by the training tests.

A module of its own (not conftest.py): test files import these by name, and every test folder
has a conftest.py, so `from conftest import ...` would pick whichever was imported first.
"""

from __future__ import annotations

from job_configs import merge_config, tiny_job_config

from keel.types.training import TrainingConfig

# The tiny job with groups of 4 in 2 mini-batches (so R2/R3 and π_old recompute have work), a
# high lr and no gradient clipping (so one step visibly moves the weights).
_STEP = {
    "group_size": 4,
    "num_minibatches": 2,
    "micro_batch_size": 2,
    "rollout": {"max_new_tokens": 8},
    "optimizer": {"lr": 1e-2, "grad_clip": None},
}


def tiny_config(**overrides) -> TrainingConfig:
    """A step small enough for a 2-core CPU: 2 prompts × 4 responses of ≤ 8 tokens."""
    return TrainingConfig.model_validate(merge_config(tiny_job_config(**_STEP), overrides))


def parity_reward(rollouts):
    """Varied rewards on an untrained model: 1.0 when the completion's byte sum is even."""
    return [float(sum(r.completion.encode()) % 2 == 0) for r in rollouts]
