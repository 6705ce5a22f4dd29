"""One delivery of `keel.run_job(job_id)`, start to finish (docs/architecture.md §5).

1. Take the lease (compare-and-set), from a dead holder of this host at once
   (`keel_server.platform.leases`). A duplicate delivery finds a live lease, or a job that is not
   runnable (finished, paused, cancelled), and returns without writing anything.
2. Heartbeat while the loop runs; the loop resumes from the latest checkpoint when there is one.
   The loop reports its progress by phase; a run stuck past its phase's bound, or deaf to a pause
   or cancel, is ended by the heartbeat's watchdog (`jobrunner.control`).
3. End the run as succeeded | paused | cancelled, or failed with the error and the step reached.
   A lost lease (another worker took over) ends it without touching the job.

A database blip (a restart, a failover, every connection dropped: `keel_server.db.transient`)
is no reason to fail the job: the worker waits for the database to answer, checks that it still
holds the lease, and runs the loop again from the latest checkpoint, as a worker taking the job
over would (the step in flight re-runs and finds its rollouts and rewards already stored). At
most `db_recovery_attempts` times in a row without a step completed in between, each after a
wait that doubles from `db_recovery_backoff_s` (a flapping database settles); a database gone
past `db_recovery_wait_s` leaves the job running, for the reaper to hand over once its lease is
stale.

A job of several processes (`config.distributed`) runs its ranks under torch.distributed's
launcher while this process keeps the lease (`jobrunner.group`); the workers of its other
machines join it through `keel.join_job` (`jobrunner.joining`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from keel_server.db import SessionFactory, make_engine, make_session_factory, session_scope
from keel_server.db import jobs as jobs_db
from keel_server.db.jobs import (
    LeaseLost,
    get_job,
    record_rendezvous,
    step_reached,
    take_lease,
)
from keel_server.db.transient import is_transient, wait_until_reachable
from keel_server.platform.leases import new_owner, owner_is_dead
from keel_server.platform.security import sealing_key
from keel_server.platform.settings import Settings
from keel_worker.jobrunner.control import JobControl, StopRun
from keel_worker.jobrunner.group import GroupEnd, RankGroup, own_refusal
from keel_worker.jobrunner.spec import JobSpec

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 4000

_FACTORIES: dict[str, SessionFactory] = {}


def session_factory(settings: Settings) -> SessionFactory:
    """One engine per database per process (created lazily: after Celery forks)."""
    url = settings.database_url
    if url not in _FACTORIES:
        _FACTORIES[url] = make_session_factory(make_engine(url))
    return _FACTORIES[url]


def dispose_engines() -> None:
    """Drop connections inherited from a parent process (call right after a fork)."""
    for factory in _FACTORIES.values():
        factory.kw["bind"].dispose(close=False)


@dataclass(frozen=True)
class RunOutcome:
    """What one delivery did: `status` is the job's end state, or why it left the job alone."""

    job_id: str
    # succeeded | paused | cancelled | failed | held | not_runnable | missing | lost | requeued
    status: str
    step: int = 0


def run_job(
    job_id: str,
    settings: Settings,
    *,
    owner: str | None = None,
    rank_args: tuple[str, ...] = (),
    call_machines: Callable[[int], object] | None = None,
    requeue: Callable[[], object] | None = None,
    on_stuck: Callable[[], None] | None = None,
) -> RunOutcome:
    """`on_stuck` runs when the watchdog ends a stuck run (`jobrunner.control`): the Celery task
    passes one that replaces this process (and with it a job's rank group, which dies with it).
    `rank_args`: extra arguments of each rank of a job trained by several processes
    (`jobrunner.rank`; `--probe` runs the group's self-check instead of training).
    `call_machines(n)` asks n more workers to join a job of several machines (`keel.join_job`
    messages) once its rendezvous is recorded on the job; `requeue()` sends the job again after
    its group failed in a way a new attempt may not repeat (`Settings.group_requeues`)."""
    factory = session_factory(settings)
    owner = owner or new_owner()
    with session_scope(factory) as session:
        job = get_job(session, job_id)
        # A holder of this host that no longer runs (this worker before a crash): take over now.
        holder = job.lease_owner if job is not None else None
        lease = take_lease(
            session,
            job_id,
            owner,
            lease_timeout_s=settings.lease_timeout_s,
            dead_owner=holder if owner_is_dead(holder) else None,
        )
    if not lease.acquired:
        log.info("job %s: not taken (%s)", job_id, lease.reason)
        return RunOutcome(job_id, lease.reason)
    control = JobControl(
        factory,
        job_id,
        owner,
        interval_s=settings.heartbeat_interval_s,
        db_wait_s=settings.db_recovery_wait_s,
        bound_of=settings.phase_timeout_s,
        stall_grace_s=settings.stall_grace_s,
        on_stuck=on_stuck,
    )
    try:
        spec = JobSpec.from_row(lease.job, sealing_key=sealing_key(settings))
    except ValueError as exc:
        control.end("failed", error=describe(exc, lease.job.step))
        return RunOutcome(job_id, "failed", lease.job.step)
    log.info("job %s: lease taken by %s (attempt %d)", job_id, owner, lease.job.attempts)
    tensor_parallel = spec.config.distributed.tensor_parallel
    if tensor_parallel is not None:  # the job's vLLM tensor-parallel size over the worker's
        settings = settings.model_copy(update={"vllm_tensor_parallel_size": tensor_parallel})
    with control:
        if spec.config.distributed.world_size > 1:
            calls = _GroupCalls(rank_args, call_machines, requeue)
            return _run_group(spec, settings, factory, control, calls)
        return _run_leased(spec, settings, factory, control)


def _run_group(
    spec: JobSpec,
    settings: Settings,
    factory: SessionFactory,
    control: JobControl,
    calls: _GroupCalls,
) -> RunOutcome:
    """A job of several ranks: this process keeps the lease while its launcher runs the ranks
    (`jobrunner.group`); rank 0 writes the job's progress, this process its end."""
    refused = own_refusal(spec.config.distributed, settings)
    if refused is not None:
        control.end("failed", error=refused)
        return RunOutcome(spec.id, "failed", 0)
    request = spec.config.distributed

    def announce(endpoint: str) -> None:
        with session_scope(factory) as session:
            record_rendezvous(session, spec.id, control.owner, endpoint)
        if calls.call_machines is not None:
            calls.call_machines(request.nodes - 1)

    group = RankGroup(
        spec.id, request, settings, control, rank_args=calls.rank_args, on_rendezvous=announce
    )
    try:
        end = group.run()
    except StopRun:
        end = GroupEnd("lost")
    if end.status == "lost":
        log.warning("job %s: lease lost; its rank group is ended", spec.id)
        return RunOutcome(spec.id, "lost", _step_of(factory, spec.id))
    if end.retryable and _requeued(factory, spec.id, control.owner, end, settings):
        if calls.requeue is not None:
            calls.requeue()
        return RunOutcome(spec.id, "requeued", _step_of(factory, spec.id))
    control.end(end.status, error=end.error, reason=end.reason)
    step = end.step if end.step is not None else _step_of(factory, spec.id)
    return RunOutcome(spec.id, end.status, step)


@dataclass(frozen=True)
class _GroupCalls:
    """What a delivery of a job of several ranks may call besides the database."""

    rank_args: tuple[str, ...]
    call_machines: Callable[[int], object] | None
    requeue: Callable[[], object] | None


def _requeued(
    factory: SessionFactory, job_id: str, owner: str, end: GroupEnd, settings: Settings
) -> bool:
    """Put the job back in the queue (running → queued, the reason on the event) while it has
    re-queues left: attempt n re-queues when n ≤ `group_requeues`."""
    with session_scope(factory) as session:
        job = get_job(session, job_id)
        if job is None or job.attempts > settings.group_requeues:
            return False
        left = settings.group_requeues - job.attempts
        return jobs_db.transition(
            session,
            job_id,
            from_statuses=("running",),
            to="queued",
            owner=owner,
            values={"lease_owner": None, "requested": None},
            event={"reason": f"re-queued ({left} re-queue(s) left) after: {end.error}"},
        )


def _step_of(factory: SessionFactory, job_id: str) -> int:
    with session_scope(factory) as session:
        return step_reached(session, job_id)


def _run_leased(
    spec: JobSpec, settings: Settings, factory: SessionFactory, control: JobControl
) -> RunOutcome:
    recoveries, progress = 0, -1  # blips since the loop last completed a step; that step
    while True:
        outcome = _run_loop_once(spec, settings, factory, control)
        if not isinstance(outcome, _DatabaseBlip):
            return outcome
        blip = outcome
        if blip.step > progress:  # a job that advances between blips may meet any number
            recoveries, progress = 0, blip.step
        if recoveries >= settings.db_recovery_attempts:
            log.error("job %s: database blip number %d: giving up", spec.id, recoveries + 1)
            control.end("failed", error=blip.error)
            return RunOutcome(spec.id, "failed", blip.step)
        recoveries += 1
        control.progress("load")  # waiting for the database, then loading the model again
        log.warning(
            "job %s: database blip (%s); resuming from the last checkpoint (recovery %d of %d)",
            spec.id,
            blip.error,
            recoveries,
            settings.db_recovery_attempts,
        )
        backoff = settings.db_recovery_backoff_s * 2 ** (recoveries - 1)
        time.sleep(min(backoff, settings.db_recovery_wait_s))  # a flapping database settles
        if not wait_until_reachable(factory, timeout_s=settings.db_recovery_wait_s):
            log.error(
                "job %s: the database did not come back; leaving the job to the reaper", spec.id
            )
            return RunOutcome(spec.id, "lost", blip.step)
        try:
            control.check(refresh=True)  # still the holder? a cancel or pause during the blip?
        except StopRun as stop:
            if stop.reason == "lost":
                return RunOutcome(spec.id, "lost", blip.step)
            # A pause or cancel requested meanwhile: the next loop honours it before any step.
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Down again already: the next loop meets it and counts one more blip.


@dataclass(frozen=True)
class _DatabaseBlip:
    """A loop that ended on a dropped connection. Only the text of the error is kept: its
    traceback would hold the old loop (model, optimizer, engine) alive while the next loads."""

    error: str
    step: int


def _run_loop_once(
    spec: JobSpec, settings: Settings, factory: SessionFactory, control: JobControl
) -> RunOutcome | _DatabaseBlip:
    # torch stays out of light imports
    if spec.prompt_type == "tinker":
        from keel_worker.jobrunner.tinker_loop import TinkerLoop as Loop
    else:
        from keel_worker.jobrunner.loop import JobLoop as Loop

    loop = None
    try:
        loop = Loop(spec, settings, factory, control)
        status = loop.run()
    except (StopRun, LeaseLost):
        log.warning("job %s: lease lost; leaving the job to its new holder", spec.id)
        return RunOutcome(spec.id, "lost", loop.step_reached if loop else 0)
    except Exception as exc:
        step = loop.step_reached if loop else 0
        if is_transient(exc):
            log.warning("job %s: database error after step %d", spec.id, step, exc_info=True)
            return _DatabaseBlip(describe(exc, step), step)
        log.exception("job %s failed at step %d", spec.id, step)
        control.end("failed", error=describe(exc, step))
        return RunOutcome(spec.id, "failed", step)
    control.end(status, reason=loop.end_reason)
    return RunOutcome(spec.id, status, loop.step_reached)


def describe(exc: BaseException, step: int) -> str:
    text = f"{type(exc).__name__} after step {step}: {exc}"
    return text[:MAX_ERROR_CHARS]
