"""`JobSpec`: the parts of a job row the worker needs, read once when the lease is taken."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keel.types.training import TrainingConfig
from keel_server.db.models import Job


@dataclass(frozen=True)
class JobSpec:
    id: str
    config: TrainingConfig
    prompt_source: dict[str, Any]
    reward_source: dict[str, Any]
    webhook_secret: str | None

    @classmethod
    def from_row(cls, job: Job) -> JobSpec:
        """Raises pydantic's ValidationError when the stored config no longer validates."""
        return cls(
            id=job.id,
            config=TrainingConfig.model_validate(job.config),
            prompt_source=dict(job.prompt_source or {}),
            reward_source=dict(job.reward_source or {}),
            webhook_secret=job.webhook_secret,
        )
