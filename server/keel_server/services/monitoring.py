"""What an operator watches across the whole service (Prometheus `GET /metrics`): jobs and
rollouts by state, the Celery queue's depth, and the stability signals of every running job at
its latest step. Which step metrics are watched, and under which exported name, is decided here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from keel.types import metric_names as metric
from keel.types.jobs import JobStatus
from keel.types.rollouts import RolloutStatus
from keel_server.db import monitoring as monitoring_db
from keel_server.db import session_scope
from keel_server.db.monitoring import RunningJob
from keel_server.platform.queue import queue_depth
from keel_server.platform.security import same_secret
from keel_server.platform.settings import Settings
from keel_server.services.context import ServiceContext
from keel_server.services.errors import ServiceError, not_found

# keel's metric name -> (exported gauge name, help). The training loop writes these every step.
WATCHED_METRICS: dict[str, tuple[str, str]] = {
    metric.REWARD_MEAN: ("keel_job_reward_mean", "Mean reward of the step's scored rollouts."),
    metric.TIME_STEP: ("keel_job_step_time_seconds", "Wall time of the last step."),
    metric.MISMATCH_KL_K3: ("keel_job_mismatch_kl_k3", "k3 KL(μ‖π_old): training–inference gap."),
    metric.IS_TRUNCATED_FRAC: (
        "keel_job_is_truncated_fraction",
        "Tokens whose IS weight was capped.",
    ),
    metric.CLIP_FRAC: ("keel_job_clip_fraction", "Tokens the decoupled-PPO mask dropped."),
    metric.CLIP_FRAC_POS: (
        "keel_job_clip_fraction_pos",
        "Clipped tokens with Â > 0 (r > 1+ε_high).",
    ),
    metric.CLIP_FRAC_NEG: (
        "keel_job_clip_fraction_neg",
        "Clipped tokens with Â < 0 (r < 1−ε_low).",
    ),
}


@dataclass(frozen=True)
class Snapshot:
    jobs_by_status: dict[str, int]  # every JobStatus, zero included
    rollouts_by_status: dict[str, int]  # every RolloutStatus, zero included
    queue: str
    queue_depth: int | None  # None: the broker did not answer
    running: list[RunningJob]


def snapshot(ctx: ServiceContext) -> Snapshot:
    with session_scope(ctx.sessions) as session:
        jobs = monitoring_db.count_jobs_by_status(session)
        rollouts = monitoring_db.count_rollouts_by_status(session)
        running = monitoring_db.running_jobs_latest(session, list(WATCHED_METRICS))
    queue = ctx.settings.job_queue
    return Snapshot(
        jobs_by_status={s: jobs.get(s, 0) for s in get_args(JobStatus)},
        rollouts_by_status={s: rollouts.get(s, 0) for s in get_args(RolloutStatus)},
        queue=queue,
        queue_depth=queue_depth(ctx.producer, queue),
        running=running,
    )


def check_scrape_access(settings: Settings, token: str | None) -> None:
    """`metrics_access` decides: `open` lets anyone scrape, `off` hides the endpoint, `token`
    wants the metrics token or the admin key (the scrape spans every project)."""
    if settings.metrics_access == "off":
        raise not_found("route", "/metrics")
    if settings.metrics_access == "open":
        return
    accepted = [secret for secret in (settings.metrics_token, settings.admin_key) if secret]
    if not token or not any(same_secret(token, secret) for secret in accepted):
        raise ServiceError(
            "unauthorized", "GET /metrics wants `Authorization: Bearer <KEEL_METRICS_TOKEN>`"
        )
