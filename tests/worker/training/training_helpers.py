"""Small, fast training configs on the built-in tiny models, shared by the training tests.

A module of its own (not conftest.py): test files import these by name, and every test folder
has a conftest.py, so `from conftest import ...` would pick whichever was imported first.
"""

from __future__ import annotations

from keel.types.training import TrainingConfig


def tiny_config(**overrides) -> TrainingConfig:
    """A step small enough for a 2-core CPU: 2 prompts × 4 responses of ≤ 8 tokens."""
    base = {
        "model": {"name": "tiny-moe"},
        "prompts_per_step": 2,
        "group_size": 4,
        "num_minibatches": 2,
        "micro_batch_size": 2,
        "rollout": {"max_new_tokens": 8},
        "optimizer": {"lr": 1e-2, "grad_clip": None},
        "steps": 2,
        "eval_every": 0,
        "seed": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return TrainingConfig.model_validate(base)


def parity_reward(rollouts):
    """Varied rewards on an untrained model: 1.0 when the completion's byte sum is even."""
    return [float(sum(r.completion.encode()) % 2 == 0) for r in rollouts]
