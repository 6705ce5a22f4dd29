"""Wire types of rewards and of the webhook reward-service contract.

Posting a reward is idempotent per rollout: the same value again answers 200, a different value
409 `reward_conflict`; non-finite values are a 422. A webhook delivery is a `WebhookPayload`
POSTed with the headers of `keel.webhooks`; the receiver may answer with a `WebhookReply`
holding scores inline, or an empty one and post the rewards later.
"""

from __future__ import annotations

import math
from datetime import datetime

from pydantic import Field

from keel.types.common import Float, RequestModel, ResponseModel, Text
from keel.types.errors import ErrorBody
from keel.types.rollouts import RolloutStatus


def reward_problem(value: float, *, min_value: float | None, max_value: float | None) -> str | None:
    """Why `value` is not an acceptable reward for a job with this range, or None if it is.

    The one home of the rule: the API answers a 422 with this reason, and the worker drops an
    inline webhook reward for it."""
    if not math.isfinite(value):
        return f"reward {value} is not a finite number"
    if min_value is not None and value < min_value:
        return f"reward {value} is below this job's min_value {min_value}"
    if max_value is not None and value > max_value:
        return f"reward {value} is above this job's max_value {max_value}"
    return None


class RewardCreate(RequestModel):
    value: Float


class RewardItem(RequestModel):
    rollout_id: Text = Field(max_length=40)
    value: Float


class RewardBatch(RequestModel):
    rewards: list[RewardItem] = Field(min_length=1, max_length=10_000)


class RewardResult(ResponseModel):
    rollout_id: str
    ok: bool = True
    status: RolloutStatus | None = None
    reward: float | None = None
    rewarded_at: datetime | None = None
    created: bool = Field(default=False, description="False when the same value was already set.")
    error: ErrorBody | None = None


class RewardBatchResult(ResponseModel):
    results: list[RewardResult]


class WebhookRollout(ResponseModel):
    id: str
    step: int
    group_index: int
    sample_index: int
    prompt: str
    reference: str | None = None
    completion: str
    token_count: int
    deadline_at: datetime


class WebhookPayload(ResponseModel):
    type: str = "rollouts"
    job_id: str
    step: int
    rollouts: list[WebhookRollout]


class WebhookReply(ResponseModel):
    rewards: list[RewardItem] = Field(default_factory=list)
