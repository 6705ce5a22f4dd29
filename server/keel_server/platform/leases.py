"""Who holds a job's lease, whether that holder is dead, and the sweep that re-enqueues jobs
whose holder died (docs/architecture.md §5: a stale lease is taken over).

A lease owner names its process: `<hostname>:<pid namespace>:<pid>:<random>`. A holder that
stopped heartbeating for `Settings.lease_timeout_s` is stale anywhere. On the holder's own host
(same hostname and pid namespace) a dead pid is proof at once, so a worker restarted after a
crash takes its own job back without waiting out the timeout. A live pid of another process
(pid reuse) only delays that to the timeout; a container sharing the hostname but not the pid
namespace never judges another's pids.

`LeaseReaper` runs in the API process (FastAPI lifespan) and in every worker: a job whose worker
died is re-enqueued even when no worker is left running. Whichever delivery takes the lease
resumes the job from its latest checkpoint; extra deliveries find the live lease and exit. It also
re-enqueues a job queued longer than `Settings.queued_timeout_s`, whose broker message may be
lost (a broker restart without persistence, an expired or purged message).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from celery import Celery

from keel_server.db import SessionFactory, session_scope
from keel_server.db.jobs import claim_long_queued, find_stale_jobs, running_leases
from keel_server.platform.queue import enqueue_run_job
from keel_server.platform.settings import Settings

log = logging.getLogger(__name__)


def new_owner() -> str:
    """A lease owner id naming this process (see the module docstring)."""
    return f"{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when `owner` is a process of this host and pid namespace that no longer runs."""
    parts = (owner or "").rsplit(":", 3)
    if len(parts) != 4 or not parts[2].isascii() or not parts[2].isdigit():
        return False
    host, namespace, pid, _ = parts
    if host != socket.gethostname() or namespace != _pid_namespace():
        return False
    return not pid_running(int(pid))


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:")
    except OSError:  # not Linux: one namespace per host
        return "-"


def pid_running(pid: int) -> bool:
    """Whether `pid` is a process of this host that has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return True


def start_reaper(factory: SessionFactory, producer: Celery, settings: Settings) -> LeaseReaper:
    """The reaper of this process, enqueueing through `producer`."""
    return LeaseReaper(
        factory,
        lambda job_id: enqueue_run_job(producer, settings, job_id),
        lease_timeout_s=settings.lease_timeout_s,
        queued_timeout_s=settings.queued_timeout_s,
        interval_s=settings.reaper_interval_s,
    ).start()


class LeaseReaper:
    """A daemon thread: at start and every `interval_s`, enqueue each job whose lease holder is
    dead or stale (a job at most once per lease timeout), and each job queued longer than
    `queued_timeout_s` (once per that bound, across processes)."""

    def __init__(
        self,
        factory: SessionFactory,
        enqueue: Callable[[str], object],
        *,
        lease_timeout_s: float,
        queued_timeout_s: float,
        interval_s: float | None = None,
    ) -> None:
        self.factory = factory
        self.enqueue = enqueue
        self.lease_timeout_s = lease_timeout_s
        self.queued_timeout_s = queued_timeout_s
        self.interval_s = interval_s or max(lease_timeout_s / 2, 0.5)
        self._sent_at: dict[str, float] = {}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="keel-reaper", daemon=True)

    def start(self) -> LeaseReaper:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def sweep(self) -> list[str]:
        """Enqueue the orphaned jobs not enqueued within the last lease timeout; returns them."""
        with session_scope(self.factory) as session:
            orphans = set(find_stale_jobs(session, lease_timeout_s=self.lease_timeout_s))
            orphans |= {job for job, owner in running_leases(session) if owner_is_dead(owner)}
            lost = claim_long_queued(session, queued_timeout_s=self.queued_timeout_s)
        for job_id in lost:
            log.warning("job %s: queued too long without a worker; enqueueing it again", job_id)
            self.enqueue(job_id)
        now = time.monotonic()
        due = sorted(
            j for j in orphans if now - self._sent_at.get(j, -1e18) >= self.lease_timeout_s
        )
        for job_id in due:
            log.warning("job %s: its lease holder is gone; re-enqueueing it", job_id)
            self.enqueue(job_id)
            self._sent_at[job_id] = now
        return sorted(lost) + due

    def _loop(self) -> None:
        while not self._halt.is_set():
            try:
                self.sweep()
            except Exception:  # the DB or broker may be briefly away; sweep again later
                log.exception("lease sweep failed")
            self._halt.wait(self.interval_s)
