"""The lease holder's watchdog (`jobrunner.control`): liveness is progress by phase, on SQLite and
PostgreSQL. A phase past its bound fails the job naming the phase; a pause or cancel the loop
does not act on ends the job as asked; progress keeps a live loop alive; every give-up stops the
process through `on_stuck` (the Celery task's replaces the pool process: tests/e2e/test_stuck.py),
and a give-up that meets a database blip is recorded once the database answers.
"""

from __future__ import annotations

import time

import pytest
from pg_blip import refusing_connections

from keel_server.db import jobs as jobs_db
from keel_server.db import session_scope
from keel_server.db.events import list_events
from keel_worker.jobrunner.control import JobControl, StopRun

BOUNDS = {"load": 100.0, "generate": 5.0, "update": 50.0}


def _control(session_factory, job_id, *, stopped: list[str], grace_s: float = 30.0) -> JobControl:
    with session_scope(session_factory) as s:
        assert jobs_db.take_lease(s, job_id, "w", lease_timeout_s=60).acquired
    return JobControl(
        session_factory,
        job_id,
        "w",
        interval_s=3600,  # beats and watches are driven by the test
        db_wait_s=5.0,
        bound_of=BOUNDS.__getitem__,
        stall_grace_s=grace_s,
        on_stuck=lambda: stopped.append("stopped"),
    )


def _job(session_factory, job_id):
    with session_scope(session_factory) as s:
        job = jobs_db.get_job(s, job_id)
        events = [e.data for e in list_events(s, job_id, after_id=0, limit=20)]
        s.expunge(job)
    return job, events


def test_the_heartbeat_stores_the_phase_and_when_it_began(session_factory, job_id) -> None:
    control = _control(session_factory, job_id, stopped=[])
    control.beat()
    job, _ = _job(session_factory, job_id)
    assert job.phase == "load" and job.progress_at is not None
    control.progress("generate")
    control.beat()
    moved, _ = _job(session_factory, job_id)
    assert moved.phase == "generate" and moved.progress_at > job.progress_at
    with session_scope(session_factory) as s:
        assert jobs_db.finish_job(s, job_id, "w", "succeeded")
    done, _ = _job(session_factory, job_id)
    assert done.phase is None  # no worker runs it


def test_a_phase_past_its_bound_fails_the_job_naming_the_phase(session_factory, job_id) -> None:
    stopped: list[str] = []
    control = _control(session_factory, job_id, stopped=stopped)
    control.progress("generate")
    started = control.clock.last.at_monotonic
    assert not control.watch(started + 4.9)  # within generate's 5 s
    assert stopped == [] and control.stop_reason() is None
    assert control.watch(started + 5.1)
    job, events = _job(session_factory, job_id)
    assert job.status == "failed" and job.lease_owner is None
    assert "no progress for 5 s in phase 'generate'" in job.error
    assert "after step 0" in job.error and "replaced" in job.error
    assert events[-1] == {"status": "failed", "error": job.error}
    assert stopped == ["stopped"]
    # The stuck loop, should it ever move again, finds its lease gone and writes nothing.
    assert control.stop_reason() == "lost"
    with pytest.raises(StopRun):
        control.check()


def test_progress_keeps_a_slow_but_moving_loop_alive(session_factory, job_id) -> None:
    stopped: list[str] = []
    control = _control(session_factory, job_id, stopped=stopped)
    control.progress("generate")
    control.progress("update")  # a new phase, with its own (longer) bound, starts the clock again
    assert not control.watch(control.clock.last.at_monotonic + 49)
    assert control.watch(control.clock.last.at_monotonic + 51)
    assert "phase 'update'" in _job(session_factory, job_id)[0].error


def test_a_wait_uses_its_own_deadline_as_its_bound(session_factory, job_id) -> None:
    control = _control(session_factory, job_id, stopped=[])
    control.progress("rewards", bound_s=600.0 + 30.0)
    start = control.clock.last.at_monotonic
    assert not control.watch(start + 629)
    assert control.watch(start + 631)


@pytest.mark.parametrize(("request_", "status"), [("cancel", "cancelled"), ("pause", "paused")])
def test_a_stop_the_loop_does_not_act_on_ends_the_job_as_asked(
    session_factory, job_id, request_, status
) -> None:
    stopped: list[str] = []
    control = _control(session_factory, job_id, stopped=stopped, grace_s=30.0)
    control.progress("generate")
    with session_scope(session_factory) as s:
        assert jobs_db.set_requested(s, job_id, request_, from_statuses=("running",))
    control.beat()  # the heartbeat sees the request
    seen = control.clock.last.at_monotonic
    assert not control.watch(seen + 1)  # the loop has its grace to stop on its own
    job, _ = _job(session_factory, job_id)
    assert job.status == "running"
    assert control.watch(time.monotonic() + 31)
    job, events = _job(session_factory, job_id)
    assert job.status == status and job.error is None
    assert f"did not stop within 30 s of the {request_} request" in events[-1]["reason"]
    assert stopped == ["stopped"]


@pytest.mark.services
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_give_up_that_meets_a_database_blip_is_recorded_once_the_database_answers(
    session_factory, job_id, db_url
) -> None:
    stopped: list[str] = []
    control = _control(session_factory, job_id, stopped=stopped, grace_s=30.0)
    control.progress("generate")
    with session_scope(session_factory) as s:
        assert jobs_db.set_requested(s, job_id, "cancel", from_statuses=("running",))
    control.beat()
    # Every connection dropped and new ones refused for a second: the first write fails; the
    # next, once the database answers (well within `db_wait_s`), records the end.
    with refusing_connections(db_url, for_s=1.0):
        assert control.watch(time.monotonic() + 31)
    job, events = _job(session_factory, job_id)
    assert job.status == "cancelled" and job.lease_owner is None
    assert "did not stop within 30 s of the cancel request" in events[-1]["reason"]
    assert stopped == ["stopped"]


def test_a_withdrawn_pause_is_not_acted_on(session_factory, job_id) -> None:
    control = _control(session_factory, job_id, stopped=[], grace_s=1.0)
    control.progress("update")  # bound 50 s
    with session_scope(session_factory) as s:
        assert jobs_db.set_requested(s, job_id, "pause", from_statuses=("running",))
    control.beat()
    with session_scope(session_factory) as s:
        jobs_db.get_job(s, job_id).requested = None  # `resume` withdraws a pending pause
    control.beat()
    assert not control.watch(control.clock.last.at_monotonic + 10)
    assert _job(session_factory, job_id)[0].status == "running"
