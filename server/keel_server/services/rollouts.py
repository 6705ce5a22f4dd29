"""Listing and retrieving rollouts. Expiry is applied lazily before reading, so a rollout past
its deadline shows as `expired` even when no worker is polling."""

from __future__ import annotations

from keel.types.common import Page
from keel.types.rollouts import Rollout
from keel_server.db import rollouts as rollouts_db
from keel_server.db import session_scope
from keel_server.services import convert
from keel_server.services.auth import REWARD_TOKEN_SCOPE, load_job, load_rollout
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, invalid
from keel_server.services.paging import int_cursor, page_limit

ROLLOUT_STATUSES = ("awaiting_reward", "rewarded", "expired")


def list_(
    ctx: ServiceContext,
    principal: Principal,
    job_id: str,
    *,
    statuses: list[str],
    step: int | None,
    cursor: str | None,
    limit: int | None,
) -> Page[Rollout]:
    unknown = sorted(set(statuses) - set(ROLLOUT_STATUSES))
    if unknown:
        raise invalid(
            ["query", "status"], f"unknown status {unknown}; use {list(ROLLOUT_STATUSES)}"
        )
    if principal.is_reward_token:
        if set(statuses) - {"awaiting_reward"}:
            raise ServiceError("forbidden", REWARD_TOKEN_SCOPE)
        statuses = ["awaiting_reward"]
    limit = page_limit(ctx, limit)
    after = tuple(int_cursor(cursor, parts=3)) if cursor is not None else None
    with session_scope(ctx.sessions) as session:
        load_job(session, principal, job_id, reward_token_ok=True)
        rollouts_db.expire_due(session, job_id)
        rows = rollouts_db.list_rollouts(
            session, job_id, statuses=statuses, step=step, after=after, limit=limit
        )
        data = [convert.rollout(r) for r in rows[:limit]]
    has_more = len(rows) > limit
    last = data[-1] if has_more else None
    next_cursor = f"{last.step}.{last.group_index}.{last.sample_index}" if last else None
    return Page[Rollout](data=data, has_more=has_more, next_cursor=next_cursor)


def retrieve(ctx: ServiceContext, principal: Principal, rollout_id: str) -> Rollout:
    with session_scope(ctx.sessions) as session:
        row, _ = load_rollout(session, principal, rollout_id)
        rollouts_db.expire_due(session, row.job_id, rollout_id=row.id)
        row = rollouts_db.get_rollout(session, rollout_id)
        if principal.is_reward_token and row.status != "awaiting_reward":
            raise ServiceError(
                "forbidden",
                f"{REWARD_TOKEN_SCOPE}; rollout {rollout_id} is {row.status}",
                state=convert.rollout_state(row),
            )
        return convert.rollout(row)
