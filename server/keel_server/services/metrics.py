"""Per-step metrics of a job, filtered by name and step range, ordered by (step, name)."""

from __future__ import annotations

from keel.types.metrics import MetricPoint
from keel_server.db import metrics as metrics_db
from keel_server.db import session_scope
from keel_server.services.auth import load_job
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import invalid

MAX_POINTS = 100_000


def list_(
    ctx: ServiceContext,
    principal: Principal,
    job_id: str,
    *,
    names: list[str],
    step_min: int | None,
    step_max: int | None,
    limit: int | None,
) -> list[MetricPoint]:
    limit = MAX_POINTS if limit is None else limit
    if not 1 <= limit <= MAX_POINTS:
        raise invalid(["query", "limit"], f"must be between 1 and {MAX_POINTS}")
    if step_min is not None and step_max is not None and step_min > step_max:
        raise invalid(["query", "step_min"], "step_min must not exceed step_max")
    with session_scope(ctx.sessions) as session:
        load_job(session, principal, job_id)
        rows = metrics_db.query_metrics(
            session, job_id, names=names, step_gte=step_min, step_lte=step_max, limit=limit
        )
        return [MetricPoint(step=r.step, name=r.name, value=r.value) for r in rows[:limit]]
