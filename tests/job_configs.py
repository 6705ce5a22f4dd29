"""The one tiny job config every test starts from (import it: `from job_configs import ...`).

A module of its own, not a conftest.py: test files import it by name, and every test folder has
a conftest.py, so `from conftest import ...` would pick whichever was imported first. `tests/` is
on the import path because its conftest.py is (pytest's default `prepend` import mode).
"""

from __future__ import annotations

from typing import Any

TINY_JOB: dict[str, Any] = {
    "model": {"name": "tiny-moe"},
    "prompts_per_step": 2,
    "group_size": 2,
    "micro_batch_size": 4,
    "rollout": {"max_new_tokens": 6},
    "steps": 2,
    "eval_every": 0,
}


def merge_config(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides`: a field is replaced, except that a dict override of a nested
    section (`rollout`, `optimizer`, ...) updates that section."""
    config = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def tiny_job_config(**overrides: Any) -> dict[str, Any]:
    """A valid job config small enough for a CPU test run (2 prompts × 2 responses of ≤ 6 tokens
    on the tiny MoE model, 2 steps, no eval), with `merge_config` overrides."""
    return merge_config(TINY_JOB, overrides)
