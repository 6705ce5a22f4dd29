"""A job row's JSON columns as their wire models, parsed where they are read
(docs/house-style.md rule 14).

The API stores the job's config, reward source, prompt-source summary and guard summary as JSON;
the services and the worker read them back through these functions only, so nobody downstream
reads a key with `.get(key, default)` or repeats a default the wire model already holds.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import TypeAdapter

from keel.types.jobs import GuardSummary, RewardSource, StoredPromptType
from keel.types.training import TrainingConfig

_REWARD_SOURCE: TypeAdapter[RewardSource] = TypeAdapter(RewardSource)
_PROMPT_TYPE: TypeAdapter[StoredPromptType] = TypeAdapter(StoredPromptType)


class _StoredJob(Protocol):
    """A job row, or a query's row of some of its columns."""

    config: dict[str, Any]
    reward_source: dict[str, Any]
    prompt_source: dict[str, Any]
    guard: dict[str, Any] | None


def training_config(job: _StoredJob) -> TrainingConfig:
    return TrainingConfig.model_validate(job.config)


def reward_source(job: _StoredJob) -> RewardSource:
    """The reward source as stored: no webhook secret, the effective deadline filled in."""
    return _REWARD_SOURCE.validate_python(job.reward_source)


def prompt_type(job: _StoredJob) -> StoredPromptType:
    """The stored prompt source is a summary (inline prompts live in the prompts table): only its
    `type` is read."""
    return _PROMPT_TYPE.validate_python(job.prompt_source["type"])


def guard_summary(job: _StoredJob) -> GuardSummary:
    """What the guard did so far; a job it never touched has an empty (NULL) summary."""
    return GuardSummary.model_validate(job.guard or {})
