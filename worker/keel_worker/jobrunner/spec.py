"""`JobSpec`: the parts of a job row the worker needs, read once when the lease is taken."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keel.types.training import TrainingConfig
from keel_server.db.models import Job
from keel_server.security import unseal


@dataclass(frozen=True)
class JobSpec:
    id: str
    config: TrainingConfig
    prompt_source: dict[str, Any]
    reward_source: dict[str, Any]
    webhook_secret: str | None

    @classmethod
    def from_row(cls, job: Job, *, sealing_key: str) -> JobSpec:
        """Raises a ValueError when the stored config no longer validates (pydantic's
        ValidationError) or the webhook secret does not decrypt with `sealing_key` (SealError)."""
        return cls(
            id=job.id,
            config=TrainingConfig.model_validate(job.config),
            prompt_source=dict(job.prompt_source or {}),
            reward_source=dict(job.reward_source or {}),
            webhook_secret=unseal(sealing_key, job.webhook_secret) if job.webhook_secret else None,
        )
