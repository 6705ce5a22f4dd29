"""The one error envelope every keel endpoint returns: `{code, detail, errors?, state?}`.

`code` is stable and machine-readable; `detail` is a sentence a person can act on; `errors` lists
field problems of a 422; `state` carries the resource's current state on a 409 (e.g. a rollout).
"""

from __future__ import annotations

from typing import Any, Literal

from keel.types.common import ResponseModel

ErrorCode = Literal[
    "bad_request",  # 400: a body that could not be read
    "validation_error",  # 422: wrong field, type or impossible setting
    "unauthorized",  # 401: missing or unknown key
    "forbidden",  # 403: the key is valid but this kind of key may not do this
    "not_found",  # 404: unknown id, or one that belongs to another project or job
    "method_not_allowed",  # 405
    "conflict",  # 409: generic state conflict (e.g. cancel a finished job)
    "reward_conflict",  # 409: a different reward was already recorded for the rollout
    "rollout_not_awaiting_reward",  # 409: rollout expired or otherwise closed
    "idempotency_conflict",  # 409: the Idempotency-Key was used with a different request
    "payload_too_large",  # 413
    "rate_limited",  # 429: too many requests or running jobs for the project; see Retry-After
    "broker_unavailable",  # 503: the job was stored, stays queued, but could not be enqueued
    "unavailable",  # 503: readiness failed
    "policy_unavailable",  # 503: the worker serving the job's policy is stopping or gone
    "policy_timeout",  # 504: the policy did not answer an agent call in time
    "internal_error",  # 500
    "invalid_request",  # 400: an OpenAI-compatible call the model cannot serve as asked
    "invalid_messages",  # 400: an episode call's messages cannot be rendered (role, content)
    "invalid_tools",  # 400: malformed `tools` or `tool_choice`
    "unknown_tool",  # 400: a tool call or tool_choice naming a function not in `tools`
    "unknown_tool_call_id",  # 400: a tool message answering no call the conversation made
    "invalid_tool_arguments",  # 400: tool-call arguments that are not a JSON object
    "context_length_exceeded",  # 400: an episode's call over the model's context
    "episode_ended",  # 409: a call or claim for an episode rewarded or expired
]

STATUS_OF_CODE: dict[ErrorCode, int] = {
    "bad_request": 400,
    "validation_error": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "reward_conflict": 409,
    "rollout_not_awaiting_reward": 409,
    "idempotency_conflict": 409,
    "payload_too_large": 413,
    "rate_limited": 429,
    "broker_unavailable": 503,
    "unavailable": 503,
    "policy_unavailable": 503,
    "policy_timeout": 504,
    "internal_error": 500,
    "invalid_request": 400,
    "invalid_messages": 400,
    "invalid_tools": 400,
    "unknown_tool": 400,
    "unknown_tool_call_id": 400,
    "invalid_tool_arguments": 400,
    "context_length_exceeded": 400,
    "episode_ended": 409,
}


class FieldError(ResponseModel):
    loc: list[str | int]
    msg: str
    type: str = "value_error"


class ErrorBody(ResponseModel):
    code: str
    detail: str
    errors: list[FieldError] | None = None
    state: dict[str, Any] | None = None
