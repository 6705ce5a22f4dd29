"""Checkpoint rows: one per (job, step), pointing at the HF directory the download archives.

`size_bytes` and `sha256` describe the deterministic tar of `keel_server.storage`; the worker
computes them with `storage.archive_digest(path)` before registering.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from keel_server.db.base import new_id, utcnow
from keel_server.db.events import append_event
from keel_server.db.models import Checkpoint


def register_checkpoint(
    session: Session,
    job_id: str,
    *,
    step: int,
    policy_version: int,
    path: str,
    size_bytes: int,
    sha256: str,
) -> Checkpoint:
    """Insert, or replace the row of a step saved again after a resume."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step)
    row = session.execute(stmt).scalar_one_or_none()
    if row is None:
        row = Checkpoint(id=new_id("ckpt"), job_id=job_id, step=step)
        session.add(row)
    row.policy_version, row.path = policy_version, path
    row.size_bytes, row.sha256, row.created_at = size_bytes, sha256, utcnow()
    session.flush()
    append_event(
        session,
        job_id,
        "checkpoint",
        {"id": row.id, "step": step, "size_bytes": size_bytes, "sha256": sha256},
    )
    return row


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
    """The job's checkpoint with the highest step ≤ `step`."""
    stmt = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.step <= step)
        .order_by(Checkpoint.step.desc())
        .limit(1)
    )
    return session.execute(stmt).scalar_one_or_none()


def pin(session: Session, checkpoint: Checkpoint) -> None:
    """Mark a checkpoint that retention never deletes."""
    checkpoint.pinned = True
    session.flush()


def delete_after(session: Session, job_id: str, step: int) -> list[str]:
    """Drop the rows of the job's unpinned checkpoints past `step`; returns their paths."""
    where = (Checkpoint.job_id == job_id, Checkpoint.step > step, Checkpoint.pinned.is_(False))
    paths = list(session.execute(select(Checkpoint.path).where(*where)).scalars())
    session.execute(delete(Checkpoint).where(*where))
    return paths
