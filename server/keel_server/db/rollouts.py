"""Rollouts and their reward life cycle: awaiting_reward → rewarded | expired
(docs/architecture.md §6).

Rewards and expiry are CAS updates guarded by status and deadline, so a reward racing its
deadline ends in exactly one state. A missing reward is never turned into 0: it expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

from sqlalchemy import Connection, Double, bindparam, delete, func, select, tuple_, update
from sqlalchemy.orm import Session, load_only

from keel_server.db.base import UTCDateTime, new_id, utcnow
from keel_server.db.models import Job, Rollout
from keel_server.db.session import SessionFactory, session_scope


@dataclass(frozen=True)
class NewRollout:
    group_index: int
    sample_index: int
    prompt: str
    completion: str
    token_count: int
    finish_reason: str | None = None
    prompt_index: int | None = None
    reference: str | None = None
    payload: dict | None = None  # worker-private (token ids, ...) to resume the step


class RewardOutcome(Enum):
    CREATED = "created"  # the reward was recorded now
    SAME = "same"  # the same value was already recorded: idempotent success
    CONFLICT = "conflict"  # a different value was already recorded
    EXPIRED = "expired"  # past its deadline (now or before)
    NOT_FOUND = "not_found"


def record_rollouts(
    session: Session,
    job_id: str,
    *,
    step: int,
    policy_version: int,
    deadline_at: datetime,
    rollouts: Sequence[NewRollout],
    rewards: Sequence[float] | None = None,
) -> list[Rollout]:
    """Insert one step's rollouts as awaiting_reward (or rewarded when `rewards` is given, for
    builtin verifiers). (job, step, group, sample) is unique: a resumed step should reuse
    `step_rollouts()` rather than insert again."""
    now = utcnow()
    rows = []
    for i, r in enumerate(rollouts):
        row = Rollout(
            id=new_id("ro"),
            job_id=job_id,
            step=step,
            group_index=r.group_index,
            sample_index=r.sample_index,
            prompt_index=r.prompt_index,
            prompt=r.prompt,
            reference=r.reference,
            completion=r.completion,
            token_count=r.token_count,
            finish_reason=r.finish_reason,
            payload=r.payload,
            status="awaiting_reward",
            policy_version=policy_version,
            deadline_at=deadline_at,
            created_at=now,
        )
        if rewards is not None:
            row.status, row.reward, row.rewarded_at = "rewarded", float(rewards[i]), now
        rows.append(row)
    session.add_all(rows)
    session.flush()
    return rows


def get_rollout(session: Session, rollout_id: str) -> Rollout | None:
    stmt = select(Rollout).where(Rollout.id == rollout_id)
    return session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()


# What `get_rollout_and_job` reads of a rollout and of its job (an episode's or a rollout's
# retrieval). The other columns (a rollout's payload of token ids, a job's config and summaries)
# load when touched.
_REWARD_COLUMNS = (
    Rollout.id,
    Rollout.job_id,
    Rollout.status,
    Rollout.reward,
    Rollout.deadline_at,
    Rollout.rewarded_at,
)
_JOB_OWNER_COLUMNS = (Job.id, Job.project_id, Job.status, Job.reward_source)

_ROLLOUT_AND_JOB = (
    select(Rollout, Job)
    .join(Job, Rollout.job_id == Job.id)
    .where(Rollout.id == bindparam("rollout_id"), Job.project_id == bindparam("project_id"))
    .options(load_only(*_REWARD_COLUMNS), load_only(*_JOB_OWNER_COLUMNS))
    .execution_options(populate_existing=True)
)

# A reward post's statements, built once, on the tables rather than the mapped classes: they
# return plain rows, not ORM objects, and a post runs no ORM machinery (loading, identity map,
# the ORM's cache keys), which cost it more CPU than the statements themselves.
_rollouts, _jobs = Rollout.__table__, Job.__table__
# What a reward post reads and answers of a rollout (`RewardState`).
_REWARD_STATE = (
    _rollouts.c.id,
    _rollouts.c.job_id,
    _rollouts.c.status,
    _rollouts.c.reward,
    _rollouts.c.deadline_at,
    _rollouts.c.rewarded_at,
    _rollouts.c.expired_at,
)
_REWARD_TARGET = (
    select(*_REWARD_STATE, _jobs.c.status.label("job_status"), _jobs.c.reward_source)
    .join_from(_rollouts, _jobs, _rollouts.c.job_id == _jobs.c.id)
    .where(_rollouts.c.id == bindparam("rollout_id"), _jobs.c.project_id == bindparam("project_id"))
)
_GET_REWARD_STATE = select(*_REWARD_STATE).where(_rollouts.c.id == bindparam("rollout_id"))
_SET_REWARD = (
    update(_rollouts)
    .where(
        _rollouts.c.id == bindparam("rollout_id"),
        _rollouts.c.status == "awaiting_reward",
        _rollouts.c.deadline_at > bindparam("now", type_=UTCDateTime()),
    )
    .values(
        status="rewarded",
        reward=bindparam("value", type_=Double()),
        rewarded_at=bindparam("now", type_=UTCDateTime()),
    )
    .returning(*_REWARD_STATE)
)


class RewardState(Protocol):
    """A rollout's row as a reward post reads it: `id`, `job_id`, `status`, `reward`,
    `deadline_at`, `rewarded_at`, `expired_at` (a plain row, or the mapped `Rollout`)."""

    id: str
    job_id: str
    status: str
    reward: float | None
    deadline_at: datetime
    rewarded_at: datetime | None
    expired_at: datetime | None


class RewardTarget(RewardState, Protocol):
    """A rollout as a reward post decides on it, with its job's `job_status` and
    `reward_source`."""

    job_status: str
    reward_source: dict[str, Any]


def get_rollout_and_job(
    session: Session, rollout_id: str, *, project_id: str
) -> tuple[Rollout, Job] | None:
    """The rollout and its job, when the job is `project_id`'s: one query instead of two, of the
    columns that deciding on a reward needs (the others load when touched)."""
    params = {"rollout_id": rollout_id, "project_id": project_id}
    row = session.execute(_ROLLOUT_AND_JOB, params).one_or_none()
    return None if row is None else (row[0], row[1])


def reward_target(
    session: Session | Connection, rollout_id: str, *, project_id: str
) -> RewardTarget | None:
    """The rollout with its job's status and reward source, when the job is `project_id`'s: one
    query, of a plain row."""
    params = {"rollout_id": rollout_id, "project_id": project_id}
    return session.execute(_REWARD_TARGET, params).one_or_none()


def list_rollouts(
    session: Session,
    job_id: str,
    *,
    statuses: Sequence[str] = (),
    step: int | None = None,
    after: tuple[int, int, int] | None = None,
    limit: int,
) -> list[Rollout]:
    """Ordered by (step, group, sample); `after` is that key of the last row seen (the cursor).
    Returns up to limit+1 rows."""
    stmt = select(Rollout).where(Rollout.job_id == job_id)
    if statuses:
        stmt = stmt.where(Rollout.status.in_(tuple(statuses)))
    if step is not None:
        stmt = stmt.where(Rollout.step == step)
    key = (Rollout.step, Rollout.group_index, Rollout.sample_index)
    if after is not None:
        stmt = stmt.where(tuple_(*key) > tuple_(*after))
    return list(session.execute(stmt.order_by(*key).limit(limit + 1)).scalars())


def step_rollouts(session: Session, job_id: str, step: int) -> list[Rollout]:
    """All rollouts of a step ordered by (group, sample)."""
    stmt = (
        select(Rollout)
        .where(Rollout.job_id == job_id, Rollout.step == step)
        .order_by(Rollout.group_index, Rollout.sample_index)
        .execution_options(populate_existing=True)
    )
    return list(session.execute(stmt).scalars())


def delete_after(session: Session, job_id: str, step: int) -> int:
    """Drop the job's rollouts of steps past `step` (a guard rollback abandons those steps, and
    their re-runs sample new batches); returns how many."""
    stmt = delete(Rollout).where(Rollout.job_id == job_id, Rollout.step > step)
    return session.execute(stmt).rowcount


def set_reward(
    session: Session | Connection,
    rollout_id: str,
    value: float,
    *,
    now: datetime | None = None,
    current: RewardState | None = None,
) -> tuple[RewardOutcome, RewardState | None]:
    """Record a reward once. Idempotent for the same value; never overwrites a different one.

    `current` is the rollout as this post already read it. A rewarded rollout stays
    rewarded with that reward (only this function sets one, once), so when `current` is already
    rewarded the answer is known without another statement; otherwise the guarded UPDATE decides,
    and returns the row it changed."""
    if current is not None and current.status == "rewarded":
        return _rewarded_again(current, value)
    now = now or utcnow()
    params = {"rollout_id": rollout_id, "value": value, "now": now}
    created = session.execute(_SET_REWARD, params).one_or_none()
    if created is not None:
        return RewardOutcome.CREATED, created
    row = _reward_state(session, rollout_id)
    if row is None:
        return RewardOutcome.NOT_FOUND, None
    if row.status == "rewarded":
        return _rewarded_again(row, value)
    if row.status == "awaiting_reward":  # past its deadline but not swept yet: expire it now
        expire_due(session, row.job_id, now=now, rollout_id=rollout_id)
        row = _reward_state(session, rollout_id)
        if row is not None and row.status == "rewarded":  # lost a race to a valid post
            return _rewarded_again(row, value)
    return RewardOutcome.EXPIRED, row


def _rewarded_again(row: RewardState, value: float) -> tuple[RewardOutcome, RewardState]:
    """The answer to a post on a rollout already rewarded: the same value again, or another."""
    return (RewardOutcome.SAME if row.reward == value else RewardOutcome.CONFLICT), row


def _reward_state(session: Session | Connection, rollout_id: str) -> RewardState | None:
    return session.execute(_GET_REWARD_STATE, {"rollout_id": rollout_id}).one_or_none()


def expire_due(
    session: Session | Connection,
    job_id: str,
    *,
    now: datetime | None = None,
    step: int | None = None,
    rollout_id: str | None = None,
) -> int:
    """Mark awaiting rollouts past their deadline as expired; returns how many."""
    now = now or utcnow()
    stmt = update(Rollout).where(
        Rollout.job_id == job_id,
        Rollout.status == "awaiting_reward",
        Rollout.deadline_at <= now,
    )
    if step is not None:
        stmt = stmt.where(Rollout.step == step)
    if rollout_id is not None:
        stmt = stmt.where(Rollout.id == rollout_id)
    result = session.execute(
        stmt.values(status="expired", expired_at=now).execution_options(synchronize_session=False)
    )
    return result.rowcount


def count_by_status(session: Session, job_id: str, step: int) -> dict[str, int]:
    stmt = (
        select(Rollout.status, func.count())
        .where(Rollout.job_id == job_id, Rollout.step == step)
        .group_by(Rollout.status)
    )
    return dict(session.execute(stmt).tuples().all())


@dataclass(frozen=True)
class StepRewards:
    rollouts: list[Rollout]  # ordered by (group, sample)
    complete: bool  # False when should_stop() ended the wait with rewards still pending


def wait_for_rewards(
    factory: SessionFactory,
    job_id: str,
    step: int,
    *,
    poll_interval_s: float,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> StepRewards:
    """Poll until no rollout of the step awaits a reward (each is rewarded or expired).

    `should_stop` is checked between polls (e.g. the worker's heartbeat seeing a cancel).
    """
    while True:
        with session_scope(factory) as session:
            expire_due(session, job_id, step=step)
            counts = count_by_status(session, job_id, step)
            if counts.get("awaiting_reward", 0) == 0:
                return StepRewards(step_rollouts(session, job_id, step), True)
            if should_stop():
                return StepRewards(step_rollouts(session, job_id, step), False)
        sleep(poll_interval_s)
