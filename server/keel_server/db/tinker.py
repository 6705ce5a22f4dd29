"""The Tinker surface's state: SDK sessions, the request queue of each model (a job), and the
named weight saves.

Every call on a model is a `TinkerRequest` row, its future: the API submits it and answers
`retrieve_future` from it; the job's resident worker takes the rows in `seq_id` order (the SDK
numbers a client's calls; unnumbered ones, sampling, in arrival order) and stores each result.
A retried call (same `seq_id`, same body) finds its row again, so it is answered once; the same
`seq_id` with another body is a `SeqConflict`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from keel_server.db.base import new_id, utcnow
from keel_server.db.models import TinkerRequest, TinkerSession, TinkerWeights

REQUEST_KINDS = (
    "create_model",
    "forward",
    "forward_backward",
    "optim_step",
    "save_weights",
    "save_weights_for_sampler",
    "load_weights",
    "sample",
    "unload_model",
)
OPEN_STATES = ("queued", "running")


class SeqConflict(Exception):
    """A `seq_id` already used by the model for a different request."""

    def __init__(self, seq_id: int, request_id: str) -> None:
        super().__init__(
            f"seq_id {seq_id} was already used by request {request_id} with a different body"
        )
        self.seq_id = seq_id
        self.request_id = request_id


# ---- sessions ----------------------------------------------------------------------------------


def create_session(
    session: Session,
    *,
    project_id: str,
    tags: Sequence[str] = (),
    user_metadata: dict[str, Any] | None = None,
    sdk_version: str | None = None,
) -> TinkerSession:
    row = TinkerSession(
        id=new_id("tks"),
        project_id=project_id,
        tags=list(tags),
        user_metadata=user_metadata,
        sdk_version=sdk_version,
    )
    session.add(row)
    session.flush()
    return row


def get_session(session: Session, session_id: str) -> TinkerSession | None:
    return session.get(TinkerSession, session_id)


def heartbeat(session: Session, session_id: str) -> bool:
    """Marks the session alive; False when there is no such session."""
    done = session.execute(
        update(TinkerSession).where(TinkerSession.id == session_id).values(heartbeat_at=utcnow())
    )
    return done.rowcount > 0


def finish_session(session: Session, session_id: str, status: str) -> bool:
    """The client closed its session (first status wins); False when there is no such session."""
    row = session.get(TinkerSession, session_id)
    if row is None:
        return False
    if row.finished_at is None:
        row.finished_at, row.finish_status = utcnow(), status[:20]
    return True


# ---- requests: the API's side -------------------------------------------------------------------


def submit(
    session: Session,
    *,
    job_id: str,
    seq_id: int | None,
    kind: str,
    payload: bytes,
    content_type: str,
) -> TinkerRequest:
    """Queue a call; a retry of a numbered call (same body) returns the row it made before."""
    if kind not in REQUEST_KINDS:
        raise ValueError(f"unknown request kind {kind!r}")
    digest = hashlib.sha256(payload).hexdigest()
    if seq_id is not None:
        earlier = _by_seq(session, job_id, seq_id)
        if earlier is not None:
            return _same_or_conflict(earlier, seq_id, digest)
    row = TinkerRequest(
        id=new_id("tkr"),
        job_id=job_id,
        seq_id=seq_id,
        kind=kind,
        payload=payload,
        payload_sha256=digest,
        content_type=content_type,
        state="queued",
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # the same seq_id submitted concurrently: one row wins
        earlier = _by_seq(session, job_id, seq_id)
        if earlier is None:
            raise
        return _same_or_conflict(earlier, seq_id, digest)
    return row


def resolved(
    session: Session, *, job_id: str, kind: str, result: dict[str, Any], seq_id: int | None = None
) -> TinkerRequest:
    """A future the API answers itself (e.g. `create_model`): stored done."""
    now = utcnow()
    row = TinkerRequest(
        id=new_id("tkr"),
        job_id=job_id,
        seq_id=seq_id,
        kind=kind,
        payload=b"",
        payload_sha256=hashlib.sha256(b"").hexdigest(),
        content_type="json",
        state="done",
        result=result,
        started_at=now,
        finished_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_request(session: Session, request_id: str) -> TinkerRequest | None:
    return session.get(TinkerRequest, request_id)


def _by_seq(session: Session, job_id: str, seq_id: int | None) -> TinkerRequest | None:
    rows = select(TinkerRequest).where(
        TinkerRequest.job_id == job_id, TinkerRequest.seq_id == seq_id
    )
    return session.execute(rows).scalar_one_or_none()


def _same_or_conflict(row: TinkerRequest, seq_id: int | None, digest: str) -> TinkerRequest:
    if row.payload_sha256 != digest:
        raise SeqConflict(seq_id if seq_id is not None else -1, row.id)
    return row


# ---- requests: the worker's side ----------------------------------------------------------------


def last_finished_seq(session: Session, job_id: str) -> int | None:
    """The highest `seq_id` the model has executed (done or failed): the order resumes after it."""
    query = select(func.max(TinkerRequest.seq_id)).where(
        TinkerRequest.job_id == job_id,
        TinkerRequest.state.in_(("done", "failed")),
        TinkerRequest.kind != "create_model",
    )
    return session.execute(query).scalar_one_or_none()


# The calls that change a model's state (weights, optimizer or accumulated gradients).
STATE_CHANGING = ("forward_backward", "optim_step", "load_weights")


def last_change_at(session: Session, job_id: str) -> datetime | None:
    """When the model's state last changed: the newest state-changing call that ran."""
    query = select(func.max(TinkerRequest.finished_at)).where(
        TinkerRequest.job_id == job_id,
        TinkerRequest.state == "done",
        TinkerRequest.kind.in_(STATE_CHANGING),
    )
    return session.execute(query).scalar_one_or_none()


def was_interrupted(session: Session, job_id: str) -> bool:
    """A call was running when its worker stopped."""
    query = select(func.count()).where(
        TinkerRequest.job_id == job_id, TinkerRequest.state == "running"
    )
    return session.execute(query).scalar_one() > 0


def queued(session: Session, job_id: str, *, limit: int = 64) -> list[TinkerRequest]:
    """The job's queued calls, numbered ones in `seq_id` order first, then unnumbered by age.
    Their bodies load only when read: the worker looks at every queued call each time it picks
    one, and runs one."""
    query = (
        select(TinkerRequest)
        .options(defer(TinkerRequest.payload))
        .where(TinkerRequest.job_id == job_id, TinkerRequest.state == "queued")
        .order_by(TinkerRequest.seq_id.is_(None), TinkerRequest.seq_id, TinkerRequest.id)
        .limit(limit)
    )
    return list(session.execute(query).scalars())


def start(session: Session, request_id: str) -> bool:
    """Queued → running; False when the row is no longer queued."""
    done = session.execute(
        update(TinkerRequest)
        .where(TinkerRequest.id == request_id, TinkerRequest.state == "queued")
        .values(state="running", started_at=utcnow())
    )
    return done.rowcount > 0


def finish(session: Session, request_id: str, result: dict[str, Any]) -> None:
    session.execute(
        update(TinkerRequest)
        .where(TinkerRequest.id == request_id)
        .values(state="done", result=result, finished_at=utcnow())
    )


def fail(session: Session, request_id: str, error: str, *, category: str = "user") -> None:
    session.execute(
        update(TinkerRequest)
        .where(TinkerRequest.id == request_id)
        .values(state="failed", error=error, error_category=category, finished_at=utcnow())
    )


def fail_open(session: Session, job_id: str, error: str, *, category: str = "server") -> int:
    """Fail every queued or running call of the job (a lost worker, a job that ended)."""
    done = session.execute(
        update(TinkerRequest)
        .where(TinkerRequest.job_id == job_id, TinkerRequest.state.in_(OPEN_STATES))
        .values(state="failed", error=error, error_category=category, finished_at=utcnow())
    )
    return done.rowcount


def fail_after_gap(
    session: Session, job_id: str, *, missing_seq: int, waited_since: datetime, bound_s: float
) -> int:
    """When `missing_seq` has not arrived `bound_s` after the first later call was queued, fail
    the later numbered calls: their order can never be kept."""
    if utcnow() - waited_since < timedelta(seconds=bound_s):
        return 0
    error = (
        f"seq_id {missing_seq} never arrived: the calls after it waited {bound_s:g} s "
        "(a client sends its calls in seq_id order; one was lost)"
    )
    done = session.execute(
        update(TinkerRequest)
        .where(
            TinkerRequest.job_id == job_id,
            TinkerRequest.state == "queued",
            TinkerRequest.seq_id > missing_seq,
        )
        .values(state="failed", error=error, error_category="user", finished_at=utcnow())
    )
    return done.rowcount


# ---- named weights ------------------------------------------------------------------------------


def record_weights(
    session: Session,
    *,
    job_id: str,
    kind: str,
    name: str,
    path: str,
    policy_version: int,
    with_optimizer: bool = False,
    ephemeral: bool = False,
    size_bytes: int = 0,
    checkpoint_id: str | None = None,
) -> TinkerWeights:
    """Name a save; saving under a name again replaces what the name points to."""
    row = session.execute(
        select(TinkerWeights).where(
            TinkerWeights.job_id == job_id, TinkerWeights.kind == kind, TinkerWeights.name == name
        )
    ).scalar_one_or_none()
    if row is None:
        row = TinkerWeights(id=new_id("tkw"), job_id=job_id, kind=kind, name=name)
        session.add(row)
    row.path, row.policy_version = path, policy_version
    row.with_optimizer, row.ephemeral = with_optimizer, ephemeral
    row.size_bytes, row.checkpoint_id = size_bytes, checkpoint_id
    row.created_at = utcnow()
    session.flush()
    return row


def find_weights(session: Session, job_id: str, kind: str, name: str) -> TinkerWeights | None:
    return session.execute(
        select(TinkerWeights).where(
            TinkerWeights.job_id == job_id, TinkerWeights.kind == kind, TinkerWeights.name == name
        )
    ).scalar_one_or_none()


def list_weights(session: Session, job_id: str) -> list[TinkerWeights]:
    query = select(TinkerWeights).where(TinkerWeights.job_id == job_id).order_by(TinkerWeights.id)
    return list(session.execute(query).scalars())


def delete_weights(session: Session, weights_id: str) -> None:
    row = session.get(TinkerWeights, weights_id)
    if row is not None:
        session.delete(row)
