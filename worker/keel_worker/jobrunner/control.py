"""The lease holder's side of a job: a heartbeat thread and the cooperative stop checks.

The heartbeat renews the lease every `heartbeat_interval_s` (a training step may take longer
than the lease timeout) and picks up the pause/cancel request the API stored on the job row.
The loop asks `stop_reason()` between phases; a lost lease (another worker took the job over)
is a stop too, after which this worker must not write to the job again.
"""

from __future__ import annotations

import logging
import threading

from keel_server.db import SessionFactory, session_scope
from keel_server.db.jobs import LeaseLost, heartbeat

log = logging.getLogger(__name__)


class StopRun(Exception):
    """Raised inside the loop to leave the current step: `reason` is pause | cancel | lost;
    `detail` says why the worker pauses on its own (none when the user asked)."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class JobControl:
    """Heartbeats a held lease in the background; tells the loop when to stop."""

    def __init__(
        self, factory: SessionFactory, job_id: str, owner: str, *, interval_s: float
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.owner = owner
        self.interval_s = interval_s
        self._requested: str | None = None
        self._lost = False
        self._stop_seen = threading.Event()  # set while stop_reason() is not None
        self._halt = threading.Event()
        self._thread = threading.Thread(
            target=self._beat_forever, name="keel-heartbeat", daemon=True
        )

    def __enter__(self) -> JobControl:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(timeout=self.interval_s + 5)

    @property
    def lost(self) -> bool:
        return self._lost

    def beat(self) -> None:
        """Renew the lease now and refresh the pending request."""
        if self._lost:
            return
        try:
            with session_scope(self.factory) as session:
                self._requested = heartbeat(session, self.job_id, self.owner)
        except LeaseLost:
            log.warning("job %s: lease lost by %s", self.job_id, self.owner)
            self._lost = True
        if self.stop_reason() is None:
            self._stop_seen.clear()  # a pending pause withdrawn by `resume`
        else:
            self._stop_seen.set()

    def stop_reason(self) -> str | None:
        """`lost`, `cancel`, `pause` or None (keep going)."""
        if self._lost:
            return "lost"
        return self._requested

    def wait_for_stop(self, timeout_s: float) -> bool:
        """Sleep up to `timeout_s`, waking as soon as a heartbeat sees a stop; returns whether
        the loop must stop."""
        return self._stop_seen.wait(timeout_s)

    def check(self, *, refresh: bool = False) -> None:
        """Raise `StopRun` when the loop must stop; `refresh` asks the DB first."""
        if refresh:
            self.beat()
        reason = self.stop_reason()
        if reason is not None:
            raise StopRun(reason)

    def _beat_forever(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # a DB hiccup must not kill the heartbeat; the next beat retries
                log.exception("job %s: heartbeat failed", self.job_id)
            if self._lost:
                return
