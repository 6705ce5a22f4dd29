"""A job's prompt stream: dataset prompts written at creation, client prompts appended in
batches. `index` is the position in the stream; the worker keeps its data cursor (the next index
to read) in its checkpoints and polls `count_prompts` when a client-fed job runs dry."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from keel_server.db.models import Job, Prompt
from keel_server.db.session import SessionFactory, session_scope


def add_prompts(
    session: Session,
    job_id: str,
    prompts: Sequence[tuple[str, str | None]],
    *,
    batch_key: str | None = None,
) -> int:
    """Append (text, reference) pairs; returns the job's new prompt count.

    The counter on the job row is bumped first: on PostgreSQL that UPDATE row-locks the job (on
    SQLite it takes the write lock), so concurrent batches get disjoint index ranges.
    """
    n = len(prompts)
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(num_prompts=Job.num_prompts + n)
        .execution_options(synchronize_session=False)
    )
    total = session.execute(select(Job.num_prompts).where(Job.id == job_id)).scalar_one()
    start = total - n
    session.add_all(
        Prompt(job_id=job_id, index=start + i, text=text, reference=ref, batch_key=batch_key)
        for i, (text, ref) in enumerate(prompts)
    )
    session.flush()
    return total


def batch_prompts(session: Session, job_id: str, batch_key: str) -> list[Prompt]:
    """The prompts stored under this idempotency key, in order (empty: the batch is new)."""
    stmt = (
        select(Prompt)
        .where(Prompt.job_id == job_id, Prompt.batch_key == batch_key)
        .order_by(Prompt.index)
    )
    return list(session.execute(stmt).scalars())


def count_prompts(session: Session, job_id: str) -> int:
    return session.execute(select(Job.num_prompts).where(Job.id == job_id)).scalar_one()


def fetch_prompts(session: Session, job_id: str, *, start: int, limit: int) -> list[Prompt]:
    """Prompts with index in [start, start + limit), in order (fewer if not posted yet)."""
    stmt = (
        select(Prompt)
        .where(Prompt.job_id == job_id, Prompt.index >= start, Prompt.index < start + limit)
        .order_by(Prompt.index)
    )
    return list(session.execute(stmt).scalars())


def wait_for_prompts(
    factory: SessionFactory,
    job_id: str,
    *,
    needed: int,
    poll_interval_s: float,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll until the job has at least `needed` prompts (a client-fed job that ran dry) or
    `should_stop()`; returns the count then available."""
    while True:
        with session_scope(factory) as session:
            total = count_prompts(session, job_id)
        if total >= needed or should_stop():
            return total
        sleep(poll_interval_s)
