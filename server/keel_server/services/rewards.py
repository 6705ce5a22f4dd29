"""Posting rewards (docs/architecture.md §6): idempotent per rollout, never overwriting a different
value, refused past the deadline with the rollout's state, bounded by the job's reward range."""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from keel.types.errors import ErrorBody
from keel.types.jobs import TERMINAL_STATUSES
from keel.types.rewards import RewardBatch, RewardBatchResult, RewardResult, reward_problem
from keel_server.db import rollouts as rollouts_db
from keel_server.db import session_scope, statement_scope, stored, utcnow
from keel_server.db.rollouts import RewardOutcome
from keel_server.services import convert
from keel_server.services.auth import load_reward_target
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, invalid


def post(ctx: ServiceContext, principal: Principal, rollout_id: str, value: float) -> RewardResult:
    # No transaction: the one write is `set_reward`'s guarded UPDATE (`db.session.statement_scope`).
    with statement_scope(ctx.sessions) as connection:
        return _counted(ctx, connection, principal, rollout_id, value, loc=["body", "value"])


def post_batch(ctx: ServiceContext, principal: Principal, batch: RewardBatch) -> RewardBatchResult:
    """Each item succeeds or fails on its own (a retry of the whole batch is safe); one
    transaction, so a batch costs one commit, not one per item."""
    results = []
    with session_scope(ctx.sessions) as session:
        for i, item in enumerate(batch.rewards):
            try:
                loc = ["body", "rewards", i, "value"]
                results.append(
                    _counted(ctx, session, principal, item.rollout_id, item.value, loc=loc)
                )
            except ServiceError as exc:
                error = ErrorBody(
                    code=exc.code, detail=exc.detail, errors=exc.errors, state=exc.state
                )
                results.append(RewardResult(rollout_id=item.rollout_id, ok=False, error=error))
    return RewardBatchResult(results=results)


def _counted(
    ctx: ServiceContext,
    session: Session | Connection,
    principal: Principal,
    rollout_id: str,
    value: float,
    *,
    loc: list,
) -> RewardResult:
    """`_post`, counted by outcome for Prometheus. A body that fails validation (a non-finite
    value) never gets here: it shows as a 422 in `keel_http_requests`."""
    try:
        result = _post(session, principal, rollout_id, value, loc=loc)
    except ServiceError as exc:
        ctx.telemetry.count_reward("conflicting" if exc.code == "reward_conflict" else "rejected")
        raise
    ctx.telemetry.count_reward("accepted" if result.created else "duplicate")
    return result


def _post(
    session: Session | Connection, principal: Principal, rollout_id: str, value: float, *, loc: list
) -> RewardResult:
    rollout = load_reward_target(session, principal, rollout_id)
    # A rollout still open for a reward, of a job that has ended: nobody will read it. (An
    # expired or rewarded one answers as usual: its own state is the more precise 409, and the
    # same value again stays an idempotent 200.)
    open_ = rollout.status == "awaiting_reward" and rollout.deadline_at > utcnow()
    # Expired before its deadline: closed when its job ended (`db.jobs.close_awaiting_rollouts`).
    closed_by_end = rollout.status == "expired" and (
        rollout.expired_at is not None and rollout.expired_at < rollout.deadline_at
    )
    if rollout.job_status in TERMINAL_STATUSES and (open_ or closed_by_end):
        raise ServiceError(
            "conflict",
            f"job {rollout.job_id} is {rollout.job_status}: it takes no more rewards",
            state={"job_id": rollout.job_id, "status": rollout.job_status},
        )
    source = stored.reward_source(rollout)
    problem = reward_problem(value, min_value=source.min_value, max_value=source.max_value)
    if problem:
        raise invalid(loc, problem)
    outcome, row = rollouts_db.set_reward(session, rollout_id, value, current=rollout)
    if outcome in (RewardOutcome.CREATED, RewardOutcome.SAME):
        return RewardResult(
            rollout_id=row.id,
            status=row.status,
            reward=row.reward,
            rewarded_at=row.rewarded_at,
            created=outcome is RewardOutcome.CREATED,
        )
    if outcome is RewardOutcome.CONFLICT:
        raise ServiceError(
            "reward_conflict",
            f"rollout {rollout_id} already has reward {row.reward}; a reward is set once "
            f"and {value} differs",
            state=convert.rollout_state(row),
        )
    if outcome is RewardOutcome.EXPIRED:
        raise ServiceError(
            "rollout_not_awaiting_reward",
            f"rollout {rollout_id} is {row.status}: its reward deadline "
            f"{row.deadline_at.isoformat()} has passed; the group was dropped, not scored 0",
            state=convert.rollout_state(row),
        )
    raise ServiceError("not_found", f"rollout {rollout_id!r} does not exist")
