"""Per-step metric rows, unique per (job, step, name) so each step is written exactly once.

Writing a step again (a step re-run after a resume) replaces that step's rows in one
transaction instead of adding duplicates. Non-finite values are stored as NULL (JSON and SQLite
have no NaN) so a diverging loss stays visible as a missing point rather than vanishing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from keel_server.db.events import append_event
from keel_server.db.models import Metric


def write_step_metrics(
    session: Session, job_id: str, step: int, values: Mapping[str, float]
) -> None:
    clean = {name: (float(v) if math.isfinite(float(v)) else None) for name, v in values.items()}
    session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step == step))
    session.add_all(Metric(job_id=job_id, step=step, name=n, value=v) for n, v in clean.items())
    session.flush()
    append_event(session, job_id, "metrics", {"step": step, "values": clean})


def query_metrics(
    session: Session,
    job_id: str,
    *,
    names: Sequence[str] = (),
    step_gte: int | None = None,
    step_lte: int | None = None,
    after: tuple[int, str] | None = None,
    limit: int,
) -> list[Metric]:
    """Ordered by (step, name); `after` = the (step, name) cursor. Returns up to limit+1 rows."""
    stmt = select(Metric).where(Metric.job_id == job_id)
    if names:
        stmt = stmt.where(Metric.name.in_(tuple(names)))
    if step_gte is not None:
        stmt = stmt.where(Metric.step >= step_gte)
    if step_lte is not None:
        stmt = stmt.where(Metric.step <= step_lte)
    if after is not None:
        stmt = stmt.where(tuple_(Metric.step, Metric.name) > tuple_(*after))
    stmt = stmt.order_by(Metric.step, Metric.name).limit(limit + 1)
    return list(session.execute(stmt).scalars())


def step_metrics(session: Session, job_id: str, step: int) -> dict[str, float | None]:
    stmt = select(Metric.name, Metric.value).where(Metric.job_id == job_id, Metric.step == step)
    return dict(session.execute(stmt).tuples().all())
