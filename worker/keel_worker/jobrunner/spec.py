"""`JobSpec`: the parts of a job row the worker needs, parsed once when the lease is taken.

The stored config and reward source become their wire models here (house style 14), so the
rest of the worker reads typed fields and never repeats a default. The stored prompt source is
a summary (inline dataset prompts live in the prompts table), so only its `type` is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import TypeAdapter

from keel.types.jobs import GuardSummary, PromptSourceType, RewardSource
from keel.types.training import TrainingConfig
from keel_server.db.models import Job
from keel_server.platform.security import unseal

_REWARD_SOURCE: TypeAdapter[RewardSource] = TypeAdapter(RewardSource)
_PROMPT_TYPE: TypeAdapter[PromptSourceType] = TypeAdapter(PromptSourceType)


@dataclass(frozen=True)
class JobSpec:
    id: str
    project_id: str
    config: TrainingConfig
    prompt_type: PromptSourceType
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
            config=TrainingConfig.model_validate(job.config),
            prompt_type=_PROMPT_TYPE.validate_python(job.prompt_source.get("type")),
            reward_source=_REWARD_SOURCE.validate_python(job.reward_source),
            webhook_secret=unseal(sealing_key, job.webhook_secret) if job.webhook_secret else None,
            guard=GuardSummary.model_validate(job.guard or {}),
        )
