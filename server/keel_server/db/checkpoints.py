"""Checkpoint rows: one per (job, step), pointing at the checkpoint directory the downloads
archive.

`kinds` holds the size and sha256 of each kind's deterministic tar (`platform.storage`); the
worker computes them with `storage.archive_kinds(path)` before registering. `pinned` rows are
never deleted by retention (`pin_checkpoint`, used by the guard for the last good checkpoint);
`mark_deleted` records that retention deleted a row's files.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from keel_server.db.base import new_id, utcnow
from keel_server.db.events import append_event
from keel_server.db.models import Checkpoint, Job


def register_checkpoint(
    session: Session,
    job_id: str,
    *,
    step: int,
    policy_version: int,
    path: str,
    kinds: dict[str, dict[str, Any]],
) -> Checkpoint:
    """Insert, or replace the row of a step saved again after a resume (its pin stays)."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step)
    row = session.execute(stmt).scalar_one_or_none()
    if row is None:
        row = Checkpoint(id=new_id("ckpt"), job_id=job_id, step=step, pinned=False)
        session.add(row)
    row.policy_version, row.path, row.kinds = policy_version, path, kinds
    row.deleted_at, row.created_at = None, utcnow()
    session.flush()
    append_event(session, job_id, "checkpoint", {"id": row.id, "step": step, "kinds": kinds})
    return row


def pin_checkpoint(session: Session, checkpoint_id: str, *, pinned: bool = True) -> bool:
    """Mark a checkpoint as one retention must keep (or release it); False if there is none."""
    result = session.execute(
        update(Checkpoint).where(Checkpoint.id == checkpoint_id).values(pinned=pinned)
    )
    return result.rowcount == 1


def mark_deleted(session: Session, checkpoint_id: str) -> bool:
    """Record that retention deletes the files of a checkpoint (the row stays, for history):
    a compare-and-set that does nothing, and returns False, for a pinned or deleted row."""
    result = session.execute(
        update(Checkpoint)
        .where(
            Checkpoint.id == checkpoint_id,
            Checkpoint.pinned.is_(False),
            Checkpoint.deleted_at.is_(None),
        )
        .values(deleted_at=utcnow(), kinds={})
    )
    return result.rowcount == 1


def job_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    """All of a job's checkpoint rows, deleted ones included, by step."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
    return list(session.execute(stmt).scalars())


def get_project_checkpoint(
    session: Session, checkpoint_id: str, project_id: str
) -> Checkpoint | None:
    """The checkpoint when one of `project_id`'s jobs made it; None for any other project's."""
    stmt = (
        select(Checkpoint)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.id == checkpoint_id, Job.project_id == project_id)
    )
    return session.execute(stmt).scalar_one_or_none()


def get_checkpoint(session: Session, checkpoint_id: str) -> Checkpoint | None:
    return session.get(Checkpoint, checkpoint_id)


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    stmt = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step.desc())
        .limit(1)
    )
    return session.execute(stmt).scalar_one_or_none()


def list_checkpoints(
    session: Session, job_id: str, *, after_step: int | None = None, limit: int
) -> list[Checkpoint]:
    """Ordered by step; `after_step` is the cursor. Returns up to limit+1 rows."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id)
    if after_step is not None:
        stmt = stmt.where(Checkpoint.step > after_step)
    return list(session.execute(stmt.order_by(Checkpoint.step).limit(limit + 1)).scalars())


def latest_at_most(session: Session, job_id: str, step: int) -> Checkpoint | None:
    """The job's checkpoint with the highest step ≤ `step` whose files retention kept."""
    stmt = (
        select(Checkpoint)
        .where(
            Checkpoint.job_id == job_id, Checkpoint.step <= step, Checkpoint.deleted_at.is_(None)
        )
        .order_by(Checkpoint.step.desc())
        .limit(1)
    )
    return session.execute(stmt).scalar_one_or_none()


def delete_after(session: Session, job_id: str, step: int) -> list[str]:
    """Drop the rows of the job's unpinned checkpoints past `step`; returns their paths."""
    where = (Checkpoint.job_id == job_id, Checkpoint.step > step, Checkpoint.pinned.is_(False))
    paths = list(session.execute(select(Checkpoint.path).where(*where)).scalars())
    session.execute(delete(Checkpoint).where(*where))
    return paths
