"""Service-wide aggregates for monitoring (Prometheus scrapes): how many jobs and rollouts are in
each state, and the latest step's metrics of every running job. Reads only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from keel_server.db.models import Job, Metric, Project, Rollout


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    project: str
    step: int  # last completed step
    metrics: dict[str, float | None]  # of that step, by name (None = non-finite)


def count_jobs_by_status(session: Session) -> dict[str, int]:
    stmt = select(Job.status, func.count()).group_by(Job.status)
    return dict(session.execute(stmt).tuples().all())


def count_rollouts_by_status(session: Session) -> dict[str, int]:
    stmt = select(Rollout.status, func.count()).group_by(Rollout.status)
    return dict(session.execute(stmt).tuples().all())


def running_jobs_latest(session: Session, names: Sequence[str]) -> list[RunningJob]:
    """Every running job with the named metrics of its last completed step."""
    jobs = (
        session.execute(
            select(Job.id, Project.name, Job.step)
            .join(Project, Project.id == Job.project_id)
            .where(Job.status == "running")
            .order_by(Job.id)
        )
        .tuples()
        .all()
    )
    values = (
        session.execute(
            select(Metric.job_id, Metric.name, Metric.value)
            .join(Job, (Job.id == Metric.job_id) & (Job.step == Metric.step))
            .where(Job.status == "running", Metric.name.in_(tuple(names)))
        )
        .tuples()
        .all()
    )
    by_job: dict[str, dict[str, float | None]] = {}
    for job_id, name, value in values:
        by_job.setdefault(job_id, {})[name] = value
    return [RunningJob(j, p, s, by_job.get(j, {})) for j, p, s in jobs]
