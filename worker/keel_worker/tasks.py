"""Celery tasks of the worker. `keel.run_job(job_id)` carries the job id only; everything else
is read from the database (docs/house-style.md rule 5). See `keel_worker.jobrunner.runner`.

Worker start-up imports the training stack once in the parent process (forked pool processes start
with torch loaded), starts the lease reaper (`keel_server.platform.leases`) and advertises what one
job may ask of this worker (`keel_worker.advertise`). Each pool process dies with the worker's main
process (`lifeline`): a SIGKILLed worker must not leave its job running, lease renewed, in an
orphan.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from dataclasses import asdict
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from sqlalchemy.exc import OperationalError

from keel_server.platform.leases import LeaseReaper, start_reaper
from keel_server.platform.queue import JOIN_JOB_TASK, enqueue_join_job, enqueue_run_job
from keel_worker.advertise import Advertiser
from keel_worker.celery_app import RUN_JOB_TASK, app
from keel_worker.jobrunner.joining import join_job as join_job_once
from keel_worker.jobrunner.runner import dispose_engines, session_factory
from keel_worker.jobrunner.runner import run_job as run_job_once
from keel_worker.lifeline import die_with_parent

log = logging.getLogger(__name__)
_reaper: LeaseReaper | None = None
_advertiser: Advertiser | None = None  # this worker's row in `workers` (keel_worker.advertise)
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
    settings = app.keel_settings

    def call_machines(count: int) -> None:
        for _ in range(count):
            enqueue_join_job(app, settings, job_id)

    outcome = run_job_once(
        job_id,
        settings,
        call_machines=call_machines,
        requeue=lambda: enqueue_run_job(app, settings, job_id),
        on_stuck=_replace_this_process,
    )
    log.info("keel.run_job(%s) -> %s at step %d", job_id, outcome.status, outcome.step)
    return asdict(outcome)


@app.task(name=JOIN_JOB_TASK, acks_late=True, ignore_result=True)
def join_job(job_id: str) -> str:
    """Run this machine's ranks of a job another worker leased, to the group's end."""
    status = join_job_once(job_id, app.keel_settings)
    log.info("keel.join_job(%s) -> %s", job_id, status)
    return status


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
def _start_reaper(sender: Any = None, **_: Any) -> None:
    global _reaper, _advertiser
    factory = session_factory(app.keel_settings)
    _reaper = start_reaper(factory, app, app.keel_settings)
    worker_id = getattr(sender, "hostname", None) or f"keel@{socket.gethostname()}:{os.getpid()}"
    _advertiser = Advertiser(factory, app.keel_settings, worker_id).start()


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop()
    if _advertiser is not None:
        _advertiser.stop()


@worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    """A forked pool process dies with the main process and must not reuse its connections."""
    if _main_pid is not None:
        die_with_parent(_main_pid)
    dispose_engines()
