"""A job's event log for Server-Sent Events: what happened after a given event id."""

from __future__ import annotations

from keel.types.jobs import TERMINAL_STATUSES, JobEvent
from keel_server.db import events as events_db
from keel_server.db import jobs as jobs_db
from keel_server.db import session_scope
from keel_server.services.auth import load_job
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.paging import int_cursor

BATCH = 200


def open_stream(
    ctx: ServiceContext, principal: Principal, job_id: str, last_event_id: str | None
) -> int:
    """Check access and return the event id the stream starts after (`Last-Event-ID`, else 0)."""
    loc = ["header", "Last-Event-ID"]
    after = int_cursor(last_event_id, loc=loc)[0] if last_event_id is not None else 0
    with session_scope(ctx.sessions) as session:
        load_job(session, principal, job_id)
    return after


def poll(ctx: ServiceContext, job_id: str, *, after_id: int) -> tuple[list[JobEvent], bool]:
    """(events with id > after_id, whether the job has ended). Access is checked once by
    `open_stream` when the stream opens."""
    with session_scope(ctx.sessions) as session:
        # Status first: a terminal status and its event commit together, so reading events
        # after seeing the end cannot miss the final one.
        job = jobs_db.get_job(session, job_id)
        ended = job is None or job.status in TERMINAL_STATUSES
        rows = events_db.list_events(session, job_id, after_id=after_id, limit=BATCH)
        events = [
            JobEvent(id=r.id, job_id=r.job_id, type=r.type, data=r.data, created_at=r.created_at)
            for r in rows
        ]
    return events, ended and len(rows) < BATCH
