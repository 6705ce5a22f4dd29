"""Per-project quotas (429 with `Retry-After`): active jobs, and a request rate.

The rate is a token bucket per project in this API process (`Settings.rate_limit_per_s`, burst
`rate_limit_burst`); with several API processes each enforces it on its own share of traffic.
The active-job limit counts queued and running jobs in the database, so it holds across API
processes; paused and finished jobs hold no worker and do not count.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session

from keel_server.db import jobs as jobs_db
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError

ACTIVE_STATUSES = ("queued", "running")
ACTIVE_JOBS_RETRY_AFTER_S = 60.0  # a job runs for minutes at least


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
    """Token buckets by project id: `rate_per_s` tokens a second, at most `burst` saved."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # project -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, principal: Principal) -> None:
        """Take one token for the caller's project, or raise a 429 saying when one is free."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(principal.project_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            if tokens < 1.0:
                self._buckets[principal.project_id] = (tokens, now)
                wait_s = (1.0 - tokens) / self.rate_per_s
                raise ServiceError(
                    "rate_limited",
                    f"too many requests for this project (over {self.rate_per_s:g}/s)",
                    retry_after_s=wait_s,
                )
            self._buckets[principal.project_id] = (tokens - 1.0, now)
