"""A job's checkpoints in the database: registering a saved checkpoint directory (the size and
sha256 of each download kind, hashed here once so no request ever hashes a checkpoint), and the
job's retention policy (`config.checkpoint_keep_last`) applied to its rows.

Retention deletes what `training.checkpoint.checkpoints_to_delete` names among the rows that
still have files: all but the newest k, never a pinned one (`db.checkpoints.pin_checkpoint`,
which the guard uses for the last good checkpoint). Each row is marked deleted first, by a
compare-and-set that fails when the row was pinned meanwhile, and only then are its files
removed; files of rows marked earlier whose removal a crash interrupted are removed on the next
pass. A download of a deleted checkpoint is a 409 naming the policy.

`JobCheckpoints` is the job's rows as the stability guard's checkpoint store
(`training.guard_policy`), inside one transaction (`guard_checkpoints`): a rollback drops the rows
past its step together with the rest of its bookkeeping, and their files go once that commits.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from keel_server.db import SessionFactory, session_scope
from keel_server.db.checkpoints import (
    delete_after,
    job_checkpoints,
    latest_at_most,
    mark_deleted,
    pin_checkpoint,
    register_checkpoint,
)
from keel_server.platform.storage import archive_kinds
from keel_worker.training.checkpoint import checkpoints_to_delete
from keel_worker.training.guard_policy import StoredCheckpoint


def register_checkpoint_dir(
    factory: SessionFactory, job_id: str, path: Path, *, step: int, policy_version: int
) -> str:
    """Hash every kind of the checkpoint at `path` and insert (or replace) its row; its id."""
    kinds = archive_kinds(path)
    with session_scope(factory) as session:
        row = register_checkpoint(
            session,
            job_id,
            step=step,
            policy_version=policy_version,
            path=str(path),
            kinds=kinds,
        )
        return row.id


def apply_retention(factory: SessionFactory, job_id: str, *, keep_last: int) -> list[int]:
    """Delete the files of the job's checkpoints retention drops; returns their steps."""
    with session_scope(factory) as session:
        rows = job_checkpoints(session, job_id)
        live = {r.step: r.pinned for r in rows if r.deleted_at is None}
        by_step = {r.step: (r.id, Path(r.path)) for r in rows}
        leftovers = [Path(r.path) for r in rows if r.deleted_at is not None]
    deleted = []
    for step in checkpoints_to_delete(live, keep_last=keep_last):
        checkpoint_id, path = by_step[step]
        with session_scope(factory) as session:
            marked = mark_deleted(session, checkpoint_id)
        if marked:
            deleted.append(step)
            leftovers.append(path)
    for path in leftovers:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
    return deleted


@dataclass(frozen=True)
class JobCheckpoint(StoredCheckpoint):
    """A checkpoint row, with the id that pins it."""

    id: str


class JobCheckpoints:
    """A job's checkpoint rows whose files retention kept, as a `CheckpointStore`, in `session`."""

    def __init__(self, session: Session, job_id: str) -> None:
        self.session = session
        self.job_id = job_id
        self.dropped: list[Path] = []  # files of the rows `delete_after` dropped

    def latest_at_most(self, step: int) -> JobCheckpoint | None:
        row = latest_at_most(self.session, self.job_id, step)
        return JobCheckpoint(row.step, Path(row.path), row.id) if row is not None else None

    def delete_after(self, step: int) -> None:
        """Drop the unpinned rows past `step`; their files go when `guard_checkpoints` ends."""
        self.dropped += [Path(p) for p in delete_after(self.session, self.job_id, step)]

    def pin(self, checkpoint: JobCheckpoint) -> None:
        """Keep `checkpoint` from retention (the guard's last good one)."""
        pin_checkpoint(self.session, checkpoint.id)


@contextmanager
def guard_checkpoints(factory: SessionFactory, job_id: str) -> Iterator[JobCheckpoints]:
    """The job's `JobCheckpoints` in one transaction; once it commits, the files of the rows it
    dropped are removed (the diverged states: a resume must never pick them up)."""
    with session_scope(factory) as session:
        store = JobCheckpoints(session, job_id)
        yield store
    for stale in store.dropped:
        shutil.rmtree(stale, ignore_errors=True)
