"""The `workers` table: each worker's advertisement (what one job may ask of it), renewed while it
runs. Job creation reads the live rows of a queue (`keel_server.services.capacity`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from keel_server.db.base import utcnow
from keel_server.db.models import Worker


def advertise(
    session: Session,
    worker_id: str,
    *,
    host: str,
    queue: str,
    max_processes: int,
    engines: Sequence[str],
    now: datetime | None = None,
) -> None:
    """Insert or renew this worker's row (one writer per id: the worker itself)."""
    now = now or utcnow()
    row = session.get(Worker, worker_id)
    if row is None:
        session.add(
            Worker(
                id=worker_id,
                host=host,
                queue=queue,
                max_processes=max_processes,
                engines=list(engines),
                started_at=now,
                last_seen_at=now,
            )
        )
        return
    row.host, row.queue, row.max_processes = host, queue, max_processes
    row.engines, row.last_seen_at = list(engines), now


def withdraw(session: Session, worker_id: str) -> None:
    """A worker that stops cleanly removes its row (a crashed one's row just goes stale)."""
    session.execute(delete(Worker).where(Worker.id == worker_id))


def live_workers(session: Session, queue: str, *, seen_after: datetime) -> list[Worker]:
    """The workers of `queue` seen since `seen_after`, the most capable first."""
    stmt = (
        select(Worker)
        .where(Worker.queue == queue, Worker.last_seen_at >= seen_after)
        .order_by(Worker.max_processes.desc(), Worker.id)
    )
    return list(session.execute(stmt).scalars())
