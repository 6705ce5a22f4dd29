"""Celery tasks of the worker. `keel.run_job(job_id)` carries the job id only; everything else
is read from the database (docs/house-style.md rule 5). See `keel_worker.jobrunner.runner`.

Worker start-up imports the training stack once in the parent process (forked pool processes start
with torch loaded) and starts the lease reaper (`keel_server.platform.leases`). Each pool process
dies with the worker's main process (`lifeline`): a SIGKILLed worker must not leave its job running,
lease renewed, in an orphan.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import asdict
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from sqlalchemy.exc import OperationalError

from keel_server.platform.leases import LeaseReaper, start_reaper
from keel_worker.celery_app import RUN_JOB_TASK, app
from keel_worker.jobrunner.runner import dispose_engines, session_factory
from keel_worker.jobrunner.runner import run_job as run_job_once
from keel_worker.lifeline import die_with_parent

log = logging.getLogger(__name__)
_reaper: LeaseReaper | None = None
_main_pid: int | None = None  # the worker's main process, recorded before the pool forks


@app.task(
    name=RUN_JOB_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # The database unreachable before the lease is taken: try again later rather than drop the
    # message and leave the job queued forever. Failures after the lease end the job as failed.
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=30,
)
def run_job(job_id: str) -> dict[str, Any]:
    """Run (or resume) one job to its end; a duplicate delivery returns without touching it."""
    outcome = run_job_once(job_id, app.keel_settings, on_stuck=_replace_this_process)
    log.info("keel.run_job(%s) -> %s at step %d", job_id, outcome.status, outcome.step)
    return asdict(outcome)


def _replace_this_process() -> None:
    """A stuck job's thread cannot be stopped from inside: end the pool process (the pool starts
    a fresh one; the job row already says why, so the redelivered message finds it ended)."""
    log.error("stopping pool process %d: its job is stuck", os.getpid())
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


@worker_init.connect
def _preload_training_stack(**_: Any) -> None:
    """Import torch and the training stack once, before the pool forks its processes."""
    global _main_pid
    _main_pid = os.getpid()
    import keel_worker.jobrunner.loop  # noqa: F401


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    global _reaper
    _reaper = start_reaper(session_factory(app.keel_settings), app, app.keel_settings)


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop()


@worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    """A forked pool process dies with the main process and must not reuse its connections."""
    if _main_pid is not None:
        die_with_parent(_main_pid)
    dispose_engines()
