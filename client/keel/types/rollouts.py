"""Wire type of a rollout: one sampled completion waiting for, or holding, its reward."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from keel.types.common import ResponseModel

RolloutStatus = Literal["awaiting_reward", "rewarded", "expired"]


class Rollout(ResponseModel):
    id: str
    job_id: str
    step: int
    group_index: int = Field(description="Which prompt of the step (the GRPO group).")
    sample_index: int = Field(description="Which of the group's G responses.")
    prompt: str
    reference: str | None = None
    completion: str
    token_count: int
    finish_reason: str | None = None
    status: RolloutStatus
    reward: float | None = None
    policy_version: int
    deadline_at: datetime
    created_at: datetime
    rewarded_at: datetime | None = None
    expired_at: datetime | None = None
