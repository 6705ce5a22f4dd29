"""`JobSpec`: the parts of a job row the worker needs, parsed once when the lease is taken.

The stored config, reward source, prompt type and guard summary become their wire models here
(`keel_server.db.stored`, docs/house-style.md rule 14), so the rest of the worker reads typed fields
and never repeats a default.
"""

from __future__ import annotations

from dataclasses import dataclass

from keel.types.jobs import GuardSummary, RewardSource, StoredPromptType
from keel.types.training import TrainingConfig
from keel_server.db import stored
from keel_server.db.models import Job
from keel_server.platform.security import unseal


@dataclass(frozen=True)
class JobSpec:
    id: str
    project_id: str
    config: TrainingConfig
    prompt_type: StoredPromptType
    reward_source: RewardSource
    webhook_secret: str | None
    guard: GuardSummary

    @classmethod
    def from_row(cls, job: Job, *, sealing_key: str) -> JobSpec:
        """Raises a ValueError when the stored job no longer validates (pydantic's
        ValidationError) or the webhook secret does not decrypt with `sealing_key` (SealError)."""
        return cls(
            id=job.id,
            project_id=job.project_id,
            config=stored.training_config(job),
            prompt_type=stored.prompt_type(job),
            reward_source=stored.reward_source(job),
            webhook_secret=unseal(sealing_key, job.webhook_secret) if job.webhook_secret else None,
            guard=stored.guard_summary(job),
        )
