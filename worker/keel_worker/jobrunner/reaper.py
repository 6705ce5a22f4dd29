"""Re-enqueues jobs whose worker died (architecture.md §5: a stale lease is taken over).

A worker killed mid-job leaves its job `running` with a heartbeat that stops advancing, and its
broker message may be gone (the filesystem transport) or parked for hours (Redis visibility
timeout). Each worker therefore sweeps for running jobs whose heartbeat is older than the lease
timeout and enqueues `keel.run_job` for them; whichever delivery takes the lease resumes the job
from its latest checkpoint, and any extra deliveries find the live lease and exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from keel_server.db import SessionFactory, session_scope
from keel_server.db.jobs import find_stale_jobs

log = logging.getLogger(__name__)


class LeaseReaper:
    """A daemon thread: every `interval_s`, enqueue each stale job (at most once per timeout)."""

    def __init__(
        self,
        factory: SessionFactory,
        enqueue: Callable[[str], object],
        *,
        lease_timeout_s: float,
        interval_s: float | None = None,
    ) -> None:
        self.factory = factory
        self.enqueue = enqueue
        self.lease_timeout_s = lease_timeout_s
        self.interval_s = interval_s or max(lease_timeout_s / 2, 0.5)
        self._sent_at: dict[str, float] = {}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="keel-reaper", daemon=True)

    def start(self) -> LeaseReaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()

    def sweep(self) -> list[str]:
        """Enqueue the stale jobs not enqueued within the last lease timeout; returns them."""
        with session_scope(self.factory) as session:
            stale = find_stale_jobs(session, lease_timeout_s=self.lease_timeout_s)
        now = time.monotonic()
        due = [j for j in stale if now - self._sent_at.get(j, -1e18) >= self.lease_timeout_s]
        for job_id in due:
            log.warning("job %s: lease is stale; re-enqueueing it", job_id)
            self.enqueue(job_id)
            self._sent_at[job_id] = now
        return due

    def _loop(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:  # the DB or broker may be briefly away; sweep again later
                log.exception("lease sweep failed")
