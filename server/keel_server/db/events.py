"""The append-only job event log that SSE replays (`Last-Event-ID` = the last id seen)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from keel_server.db.models import JobEvent


def append_event(session: Session, job_id: str, type_: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, data=data))
    session.flush()


def list_events(session: Session, job_id: str, *, after_id: int, limit: int) -> list[JobEvent]:
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return list(session.execute(stmt).scalars())
