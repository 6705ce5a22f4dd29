"""The lease holder's side of a job: a heartbeat thread, the cooperative stop checks, the
watchdog that ends a job that stopped making progress, and the write of the run's end state
(`end`), which rides out a database blip.

The heartbeat renews the lease every `heartbeat_interval_s` (a training step may take longer
than the lease timeout) and picks up the pause/cancel request the API stored on the job row.
The loop asks `stop_reason()` between phases; a lost lease (another worker took the job over)
is a stop too, after which this worker must not write to the job again.

A live heartbeat is not a live job: a step stuck in a call that never returns keeps renewing the
lease. So the loop reports each phase it enters (`progress`, `jobrunner.progress`), each beat
stores the latest on the job row, and the heartbeat thread gives up on the run when
- the current phase ran past its bound: the job fails, its error naming the phase and the last
  progress;
- a pause or cancel was requested and the loop neither acted on it nor made progress within
  `stall_grace_s` (it is inside a call no check can interrupt): the job ends paused (resuming
  from its latest checkpoint) or cancelled, as asked.
The give-up is written through `end`, so a database blip delays it instead of failing it. Then
`on_stuck` runs; the Celery task passes one that kills the pool process, since the stuck thread
cannot be stopped from inside, and the pool starts a fresh process in its place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from keel_server.db import SessionFactory, session_scope
from keel_server.db.jobs import LeaseLost, finish_job, heartbeat, step_reached
from keel_server.db.transient import is_transient, wait_until_reachable
from keel_worker.jobrunner.progress import ProgressClock, stuck_reason

log = logging.getLogger(__name__)
END_TRIES = 3  # recording a run's end: the first write and two after a database blip


class StopRun(Exception):
    """Raised inside the loop to leave the current step: `reason` is pause | cancel | lost;
    `detail` says why the worker pauses on its own (none when the user asked)."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class JobControl:
    """Heartbeats a held lease in the background; tells the loop when to stop; ends the run
    itself when the loop stops making progress (module docstring)."""

    def __init__(
        self,
        factory: SessionFactory,
        job_id: str,
        owner: str,
        *,
        interval_s: float,
        db_wait_s: float,
        bound_of: Callable[[str], float] = lambda phase: float("inf"),
        stall_grace_s: float = float("inf"),
        on_stuck: Callable[[], None] | None = None,
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.owner = owner
        self.interval_s = interval_s
        self.db_wait_s = db_wait_s  # how long recording the end waits out a database blip
        self.stall_grace_s = stall_grace_s
        self.on_stuck = on_stuck
        self.clock = ProgressClock(bound_of)
        self._requested: str | None = None
        self._requested_since: float | None = None  # monotonic time the request was first seen
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

    def progress(self, phase: str, *, bound_s: float | None = None) -> None:
        """The loop enters `phase` (keel.types.jobs.JobPhase); a wait with its own deadline
        passes `bound_s` (that deadline plus `stall_grace_s`)."""
        self.clock.enter(phase, bound_s=bound_s)

    def beat(self) -> None:
        """Renew the lease now, store the last progress, and refresh the pending request."""
        if self._lost:
            return
        last = self.clock.last
        try:
            with session_scope(self.factory) as session:
                self._requested = heartbeat(
                    session, self.job_id, self.owner, progress=(last.phase, last.at)
                )
        except LeaseLost:
            log.warning("job %s: lease lost by %s", self.job_id, self.owner)
            self._lost = True
        if self.stop_reason() is None:
            self._stop_seen.clear()  # a pending pause withdrawn by `resume`
            self._requested_since = None
        else:
            self._stop_seen.set()
            if self._requested_since is None:
                self._requested_since = time.monotonic()

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

    def end(self, status: str, *, error: str | None = None, reason: str | None = None) -> bool:
        """Record the run's end state (`finish_job`); returns whether it was recorded. A write
        that meets a database blip (`keel_server.db.transient`) is tried again once the database
        answers (waiting at most `db_wait_s`), up to `END_TRIES` tries in all."""
        # finish_job changes only a running job this owner holds: repeating it after a blip that
        # may have committed it already is safe (the second one finds the lease released).
        for _ in range(END_TRIES - 1):
            try:
                return self._record_end(status, error=error, reason=reason)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning(
                    "job %s: recording %s met a database blip; retrying", self.job_id, status
                )
                wait_until_reachable(self.factory, timeout_s=self.db_wait_s)
        return self._record_end(status, error=error, reason=reason)

    def _record_end(self, status: str, *, error: str | None, reason: str | None) -> bool:
        with session_scope(self.factory) as session:
            ended = finish_job(session, self.job_id, self.owner, status, error=error, reason=reason)
        if not ended:
            log.warning("job %s: could not record %s (lease no longer held)", self.job_id, status)
        return ended

    def watch(self, now_monotonic: float | None = None) -> bool:
        """One watchdog check (the heartbeat thread runs it after each beat): end the run when
        it is stuck; returns whether it did."""
        now = time.monotonic() if now_monotonic is None else now_monotonic
        requested, last = self._requested, self.clock.last
        # Progress since the request means the loop still moves and will reach its next check.
        since = (
            None if self._requested_since is None else max(self._requested_since, last.at_monotonic)
        )
        if requested is not None and since is not None and now - since > self.stall_grace_s:
            reason = (
                f"the step did not stop within {self.stall_grace_s:g} s of the {requested} "
                f"request (no progress in phase '{last.phase}'); the worker process was "
                "stopped and replaced"
            )
            status = "cancelled" if requested == "cancel" else "paused"
            return self._give_up(status, reason=reason)
        overrun = self.clock.overrun(now)
        if overrun is not None:
            with session_scope(self.factory) as session:
                step = step_reached(session, self.job_id)
            return self._give_up("failed", error=stuck_reason(overrun, step))
        return False

    def _give_up(self, status: str, *, error: str | None = None, reason: str | None = None) -> bool:
        log.error("job %s: giving up on the run as %s: %s", self.job_id, status, error or reason)
        ended = self.end(status, error=error, reason=reason)
        # Whether or not this write won (another worker may hold the job now), this run must not
        # write again: the loop sees a lost lease at its next check.
        self._lost = True
        self._stop_seen.set()
        if ended and self.on_stuck is not None:
            self.on_stuck()
        return ended

    def _beat_forever(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                self.beat()
                if not self._lost and self.watch():
                    return
            except Exception:  # a DB hiccup must not kill the heartbeat; the next beat retries
                log.exception("job %s: heartbeat failed", self.job_id)
            if self._lost:
                return
