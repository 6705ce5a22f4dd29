"""Per-project quotas (429 with `Retry-After`): active jobs, and a request rate.

The rate is a token bucket per project (`Settings.rate_limit_per_s`, burst `rate_limit_burst`),
kept in Redis when the broker is Redis, so it holds across API processes (`RateLimiter`).
The active-job limit counts queued and running jobs in the database, so it holds across API
processes; paused and finished jobs hold no worker and do not count.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.orm import Session

from keel_server.db import jobs as jobs_db
from keel_server.platform import rate_buckets
from keel_server.platform.rate_buckets import LocalBuckets, RedisBuckets, StoreUnreachable, Take
from keel_server.platform.settings import Settings
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError

ACTIVE_STATUSES = ("queued", "running")
ACTIVE_JOBS_RETRY_AFTER_S = 60.0  # a job runs for minutes at least
# Seconds a process keeps its own buckets after Redis failed to answer, before it asks again:
# without it every request would wait out the Redis timeout while Redis is down.
REDIS_RETRY_S = 1.0

log = logging.getLogger(__name__)


def check_active_jobs(ctx: ServiceContext, session: Session, project_id: str) -> None:
    limit = ctx.settings.max_active_jobs_per_project
    active = jobs_db.count_jobs(session, project_id, statuses=ACTIVE_STATUSES)
    if active >= limit:
        raise ServiceError(
            "rate_limited",
            f"this project already has {active} queued or running jobs (the limit is {limit}); "
            "wait for one to finish, or cancel or pause one",
            retry_after_s=ACTIVE_JOBS_RETRY_AFTER_S,
        )


class RateLimiter:
    """The request rate of each project (`Settings.rate_limit_per_s`, burst `rate_limit_burst`).

    With a Redis broker the buckets are shared by every API process through it, so the rate holds
    for the deployment however many processes serve it; without one (the embedded deployment)
    this process keeps them. When Redis does not answer, the limiter falls back to this
    process's buckets for `REDIS_RETRY_S` before it asks Redis again: a request is never refused
    because Redis is down (that would turn a Redis outage into an API outage, reward posts
    included, which need no Redis), and the rate still holds per process, as it did before the
    buckets were shared.
    """

    def __init__(self, rate_per_s: float, burst: int, *, shared_url: str | None = None) -> None:
        self.rate_per_s = rate_per_s
        self.local = LocalBuckets(rate_per_s, burst)
        self.shared = RedisBuckets(shared_url, rate_per_s, burst) if shared_url else None
        self._redis_retry_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            settings.rate_limit_per_s,
            settings.rate_limit_burst,
            shared_url=rate_buckets.shared_store_url(settings),
        )

    async def check(self, principal: Principal) -> None:
        """Take one token for the caller's project, or raise a 429 saying when one is free."""
        verdict = await self._take(principal.project_id)
        if not verdict.spent:
            raise ServiceError(
                "rate_limited",
                f"too many requests for this project (over {self.rate_per_s:g}/s)",
                retry_after_s=verdict.wait_s,
            )

    async def _take(self, project_id: str) -> Take:
        if self.shared is not None and time.monotonic() >= self._redis_retry_at:
            try:
                return await self.shared.take(project_id)
            except StoreUnreachable as exc:
                self._redis_retry_at = time.monotonic() + REDIS_RETRY_S
                log.warning(
                    "rate limit: Redis did not answer (%s); this process keeps its own buckets "
                    "for %g s",
                    exc,
                    REDIS_RETRY_S,
                )
        return self.local.take(project_id)

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()
