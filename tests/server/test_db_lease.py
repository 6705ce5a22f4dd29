"""The job lease and state machine as CAS updates, on SQLite and PostgreSQL (docs/architecture.md
§5)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keel_server.db import jobs as jobs_db
from keel_server.db import session_scope, utcnow
from keel_server.db.events import list_events


def test_duplicate_delivery_finds_a_live_lease(session_factory, job_id) -> None:
    with session_scope(session_factory) as s:
        first = jobs_db.take_lease(s, job_id, "worker-a", lease_timeout_s=60)
    with session_scope(session_factory) as s:
        second = jobs_db.take_lease(s, job_id, "worker-b", lease_timeout_s=60)
    assert (first.acquired, first.reason, first.job.attempts) == (True, "acquired", 1)
    assert (second.acquired, second.reason) == (False, "held")
    assert second.job.lease_owner == "worker-a"
    assert second.job.attempts == 1  # the duplicate touched nothing


def test_stale_lease_is_taken_over_and_the_old_holder_loses_it(session_factory, job_id):
    t0 = utcnow()
    with session_scope(session_factory) as s:
        assert jobs_db.take_lease(s, job_id, "dead", lease_timeout_s=30, now=t0).acquired
    later = t0 + timedelta(seconds=31)
    with session_scope(session_factory) as s:
        assert jobs_db.find_stale_jobs(s, lease_timeout_s=30, now=later) == [job_id]
        takeover = jobs_db.take_lease(s, job_id, "alive", lease_timeout_s=30, now=later)
    assert takeover.acquired and takeover.job.attempts == 2
    with session_scope(session_factory) as s, pytest.raises(jobs_db.LeaseLost):
        jobs_db.heartbeat(s, job_id, "dead")
    with session_scope(session_factory) as s:
        assert not jobs_db.finish_job(s, job_id, "dead", "succeeded")
        assert jobs_db.heartbeat(s, job_id, "alive") is None
        jobs_db.record_progress(s, job_id, "alive", step=3, policy_version=3)
        assert jobs_db.finish_job(s, job_id, "alive", "failed", error="OOM at step 4")
    with session_scope(session_factory) as s:
        job = jobs_db.get_job(s, job_id)
        assert (job.status, job.step, job.error, job.lease_owner) == (
            "failed",
            3,
            "OOM at step 4",
            None,
        )
        statuses = [e.data["status"] for e in list_events(s, job_id, after_id=0, limit=10)]
    assert statuses == ["queued", "running", "running", "failed"]


def test_finished_and_paused_jobs_are_not_taken(session_factory, job_id) -> None:
    with session_scope(session_factory) as s:
        assert jobs_db.transition(s, job_id, from_statuses=("queued",), to="paused")
        result = jobs_db.take_lease(s, job_id, "w", lease_timeout_s=60)
        assert (result.acquired, result.reason) == (False, "not_runnable")
        assert not jobs_db.transition(s, job_id, from_statuses=("queued",), to="cancelled")
    with session_scope(session_factory) as s:
        assert jobs_db.take_lease(s, "job_missing", "w", lease_timeout_s=60).reason == "missing"


def test_pause_request_reaches_the_lease_holder(session_factory, job_id) -> None:
    with session_scope(session_factory) as s:
        assert jobs_db.take_lease(s, job_id, "w", lease_timeout_s=60).acquired
        assert jobs_db.set_requested(s, job_id, "pause", from_statuses=("running",))
        assert jobs_db.heartbeat(s, job_id, "w") == "pause"
        assert jobs_db.finish_job(s, job_id, "w", "paused")
        job = jobs_db.get_job(s, job_id)
        assert (job.status, job.requested, job.lease_owner, job.finished_at) == (
            "paused",
            None,
            None,
            None,
        )
    with (
        pytest.raises(ValueError, match="worker ends a job"),
        session_scope(session_factory) as s,
    ):
        jobs_db.finish_job(s, job_id, "w", "queued")


def test_the_step_reached_is_the_recorded_step_and_zero_for_a_missing_job(session_factory, job_id):
    with session_scope(session_factory) as s:
        assert jobs_db.step_reached(s, job_id) == 0
        assert jobs_db.take_lease(s, job_id, "w", lease_timeout_s=60).acquired
        jobs_db.record_progress(s, job_id, "w", step=3, policy_version=3)
    with session_scope(session_factory) as s:
        assert jobs_db.step_reached(s, job_id) == 3
        assert jobs_db.step_reached(s, "job_missing") == 0
