"""Job rows and their state machine (docs/architecture.md §5), as compare-and-set updates.

States: queued → running ⇄ paused → succeeded | failed | cancelled. Pause and cancel of a running
job are cooperative: the API sets `requested`; the lease holder sees it in `heartbeat()` and ends
with `finish_job(..., "paused" | "cancelled")`. Every update names the state it expects in its
WHERE clause and reports whether it matched, so two writers can never both win (works on SQLite).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from keel_server.db.base import utcnow
from keel_server.db.events import append_event
from keel_server.db.models import Job, Rollout

TERMINAL = ("succeeded", "failed", "cancelled")
WORKER_END_STATES = ("succeeded", "failed", "cancelled", "paused")


class LeaseLost(RuntimeError):
    """The caller no longer holds the job's lease (it was taken over or the job ended)."""


@dataclass(frozen=True)
class LeaseResult:
    acquired: bool
    job: Job | None  # the row after the attempt (None: no such job)
    reason: str  # "acquired" | "missing" | "held" | "not_runnable"


def cas_update(session: Session, stmt) -> bool:
    """Run one guarded UPDATE; True when exactly the expected row matched."""
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return result.rowcount == 1


def get_job(session: Session, job_id: str, *, project_id: str | None = None) -> Job | None:
    stmt = select(Job).where(Job.id == job_id)
    if project_id is not None:
        stmt = stmt.where(Job.project_id == project_id)
    return session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()


def step_reached(session: Session, job_id: str) -> int:
    """The last step the job recorded; 0 for a job that is gone."""
    job = get_job(session, job_id)
    return job.step if job is not None else 0


def get_job_by_idempotency_key(session: Session, project_id: str, key: str) -> Job | None:
    stmt = select(Job).where(Job.project_id == project_id, Job.idempotency_key == key)
    return session.execute(stmt).scalar_one_or_none()


def get_job_by_reward_token_hash(session: Session, token_hash: str) -> Job | None:
    stmt = select(Job).where(Job.reward_token_hash == token_hash)
    return session.execute(stmt).scalar_one_or_none()


def insert_job(session: Session, **fields: Any) -> Job:
    job = Job(**fields)
    session.add(job)
    session.flush()
    append_event(session, job.id, "status", {"status": job.status})
    return job


def list_jobs(
    session: Session,
    project_id: str,
    *,
    statuses: Sequence[str] = (),
    before_id: str | None = None,
    limit: int,
) -> list[Job]:
    """Newest first; `before_id` is the cursor (ids are time-ordered). Returns up to limit+1."""
    stmt = select(Job).where(Job.project_id == project_id)
    if statuses:
        stmt = stmt.where(Job.status.in_(statuses))
    if before_id is not None:
        stmt = stmt.where(Job.id < before_id)
    stmt = stmt.order_by(Job.id.desc()).limit(limit + 1)
    return list(session.execute(stmt).scalars())


def jobs_of_source(
    session: Session, project_id: str, source_type: str, *, offset: int, limit: int
) -> tuple[list[Job], int]:
    """A page of the project's jobs whose prompt source is `source_type` (newest first), and
    how many there are."""
    where = (Job.project_id == project_id, Job.prompt_source["type"].as_string() == source_type)
    total = session.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()
    page = select(Job).where(*where).order_by(Job.id.desc()).offset(offset).limit(limit)
    return list(session.execute(page).scalars()), total


def count_jobs(session: Session, project_id: str, *, statuses: Sequence[str]) -> int:
    stmt = select(func.count()).where(Job.project_id == project_id, Job.status.in_(statuses))
    return session.execute(stmt).scalar_one()


def transition(
    session: Session,
    job_id: str,
    *,
    from_statuses: Iterable[str],
    to: str,
    owner: str | None = None,
    values: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None,
) -> bool:
    """CAS `status: from_statuses → to` (and lease owner when given); logs a status event."""
    now = utcnow()
    new = {"status": to, "updated_at": now, **(values or {})}
    if to in TERMINAL:
        new.update(finished_at=now, lease_owner=None, requested=None)
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(tuple(from_statuses)))
    if owner is not None:
        stmt = stmt.where(Job.lease_owner == owner)
    if not cas_update(session, stmt.values(**new)):
        return False
    if to in TERMINAL:
        close_awaiting_rollouts(session, job_id, now=now)
    append_event(session, job_id, "status", {"status": to, **(event or {})})
    return True


def close_awaiting_rollouts(session: Session, job_id: str, *, now: datetime) -> int:
    """An ended job reads no more rewards: its rollouts still awaiting one expire now, in the
    transaction that ends it, so no reward service is shown work nobody will use. (Expired
    before its deadline is how a reward post tells this from a deadline that passed.)"""
    stmt = (
        update(Rollout)
        .where(Rollout.job_id == job_id, Rollout.status == "awaiting_reward")
        .values(status="expired", expired_at=now)
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).rowcount


def note_queued(session: Session, job_id: str, error: str | None) -> None:
    """Set (or clear) why a queued job's message was not sent; a job no longer queued keeps its
    own error."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(error=error))


def set_requested(
    session: Session, job_id: str, requested: str | None, *, from_statuses: Iterable[str]
) -> bool:
    """CAS the pending pause/cancel request of a job in one of `from_statuses`."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(tuple(from_statuses)))
        .values(requested=requested, updated_at=utcnow())
    )
    return cas_update(session, stmt)


def _stale(stale_before: datetime):
    return or_(
        Job.lease_owner.is_(None), Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before
    )


# ---- worker side: the lease ------------------------------------------------------------------


def take_lease(
    session: Session,
    job_id: str,
    owner: str,
    *,
    lease_timeout_s: float,
    dead_owner: str | None = None,
    now: datetime | None = None,
) -> LeaseResult:
    """Take a queued job, or a running one whose holder stopped heartbeating (a dead worker),
    or whose holder is `dead_owner` (known dead, `keel_server.platform.leases.owner_is_dead`).

    A duplicate delivery finds a live lease and gets `acquired=False, reason="held"`: it must
    exit without touching the job. Each successful take counts one attempt.
    """
    now = now or utcnow()
    stale_before = now - timedelta(seconds=lease_timeout_s)
    holder_gone = _stale(stale_before)
    if dead_owner is not None:
        holder_gone = or_(holder_gone, Job.lease_owner == dead_owner)
    takeable = or_(Job.status == "queued", (Job.status == "running") & holder_gone)
    stmt = (
        update(Job)
        .where(Job.id == job_id, takeable)
        .values(
            status="running",
            lease_owner=owner,
            heartbeat_at=now,
            phase="load",
            progress_at=now,
            error=None,  # a note of a refused send while it was queued
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
    )
    acquired = cas_update(session, stmt)
    job = get_job(session, job_id)
    if job is None:
        return LeaseResult(False, None, "missing")
    if acquired:
        append_event(session, job_id, "status", {"status": "running", "attempt": job.attempts})
        return LeaseResult(True, job, "acquired")
    reason = "held" if job.status == "running" else "not_runnable"
    return LeaseResult(False, job, reason)


def heartbeat(
    session: Session,
    job_id: str,
    owner: str,
    *,
    now: datetime | None = None,
    progress: tuple[str, datetime] | None = None,
) -> str | None:
    """Renew the lease, storing the holder's last `progress` (phase, when) if given; returns
    the pending request ("pause" | "cancel" | None).

    Raises LeaseLost when the caller is no longer the running job's lease holder.
    """
    values: dict[str, Any] = {"heartbeat_at": now or utcnow()}
    if progress is not None:
        values["phase"], values["progress_at"] = progress
    _update_held(session, job_id, owner, **values)
    return session.execute(select(Job.requested).where(Job.id == job_id)).scalar_one()


def record_progress(
    session: Session, job_id: str, owner: str, *, step: int, policy_version: int
) -> None:
    """Store the last completed step and policy version (also renews the heartbeat)."""
    now = utcnow()
    _update_held(
        session,
        job_id,
        owner,
        step=step,
        policy_version=policy_version,
        heartbeat_at=now,
        updated_at=now,
    )


def record_routing_replay(
    session: Session, job_id: str, owner: str, summary: dict[str, Any]
) -> None:
    """Store the lease holder's Routing Replay summary (`RoutingReplaySummary`, dumped)."""
    _update_held(session, job_id, owner, routing_replay=summary)


def record_runtime(session: Session, job_id: str, owner: str, runtime: dict[str, Any]) -> None:
    """Store the compute choices the lease holder made for this run (`keel.types.jobs.JobRuntime`
    as JSON)."""
    _update_held(session, job_id, owner, runtime=runtime, updated_at=utcnow())


def record_serve_url(session: Session, job_id: str, owner: str, url: str | None) -> None:
    """Where the lease holder's policy server answers the job's episodes (None: not serving)."""
    _update_held(session, job_id, owner, serve_url=url)


def record_rendezvous(session: Session, job_id: str, owner: str, endpoint: str) -> None:
    """Where the lease holder hosts the c10d rendezvous of a job of several machines."""
    _update_held(session, job_id, owner, rendezvous=endpoint)


def _update_held(session: Session, job_id: str, owner: str, **values: Any) -> None:
    """Set `values` on a running job whose lease `owner` holds; `LeaseLost` otherwise (every
    write of the lease holder goes through here)."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == owner)
        .values(**values)
    )
    if not cas_update(session, stmt):
        raise LeaseLost(f"job {job_id}: lease not held by {owner}")


def finish_job(
    session: Session,
    job_id: str,
    owner: str,
    status: str,
    *,
    error: str | None = None,
    reason: str | None = None,
) -> bool:
    """End the lease holder's run: succeeded | failed | cancelled, or paused (after checkpoint).

    Step, metrics and checkpoints stay; `error` is kept for a failed job; `reason` (why the
    worker paused on its own: the stability guard) goes on the status event.
    """
    if status not in WORKER_END_STATES:
        raise ValueError(f"a worker ends a job as one of {WORKER_END_STATES}, not {status!r}")
    values: dict[str, Any] = {
        "lease_owner": None,
        "requested": None,
        "serve_url": None,
        "phase": None,
    }
    if error is not None:
        values["error"] = error
    event = {k: v for k, v in (("error", error), ("reason", reason)) if v is not None} or None
    return transition(
        session,
        job_id,
        from_statuses=("running",),
        to=status,
        owner=owner,
        values=values,
        event=event,
    )


def record_guard(
    session: Session, job_id: str, owner: str, summary: dict[str, Any], events: list[dict]
) -> None:
    """Store the stability guard's summary and append its `guard` events (lease holder only)."""
    _update_held(session, job_id, owner, guard=summary, updated_at=utcnow())
    for event in events:
        append_event(session, job_id, "guard", event)


def find_stale_jobs(
    session: Session, *, lease_timeout_s: float, now: datetime | None = None
) -> list[str]:
    """Ids of running jobs whose lease holder stopped heartbeating (for a re-enqueue sweep)."""
    stale_before = (now or utcnow()) - timedelta(seconds=lease_timeout_s)
    stmt = select(Job.id).where(Job.status == "running", _stale(stale_before))
    return list(session.execute(stmt).scalars())


def claim_long_queued(
    session: Session, *, queued_timeout_s: float, now: datetime | None = None
) -> list[str]:
    """Ids of jobs queued for longer than `queued_timeout_s` (their broker message may be
    lost), each claimed for a re-enqueue by one compare-and-set on `updated_at`, so of all the
    processes sweeping, one enqueues it per bound."""
    now = now or utcnow()
    before = now - timedelta(seconds=queued_timeout_s)
    long_queued = (Job.status == "queued", Job.updated_at < before)
    ids = list(session.execute(select(Job.id).where(*long_queued)).scalars())
    claim = update(Job).where(*long_queued)
    return [j for j in ids if cas_update(session, claim.where(Job.id == j).values(updated_at=now))]


def running_leases(session: Session) -> list[tuple[str, str | None]]:
    """(job id, lease owner) of every running job, for a sweep that checks the owners."""
    stmt = select(Job.id, Job.lease_owner).where(Job.status == "running")
    return [(job_id, owner) for job_id, owner in session.execute(stmt)]
