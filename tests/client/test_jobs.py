"""`client.jobs` against the real app: typed results, typed errors from the envelope, cursor
pagination, project isolation, control verbs, `wait()` raising on failure, the SSE iterator."""

from __future__ import annotations

import asyncio

import pytest

import keel
from keel.types.jobs import Job, JobCreated, JobEvent
from keel_server.db import session_scope
from keel_server.db.jobs import finish_job, take_lease
from keel_server.db.metrics import write_step_metrics


def test_create_retrieve_list_paginate(project_client, small_config):
    client = project_client("alpha")
    created = [client.jobs.create(small_config(seed=i), name=f"job-{i}") for i in range(3)]
    assert all(isinstance(j, JobCreated) and j.status == "queued" for j in created)
    assert created[0].reward_token  # shown once, at creation
    shown = client.jobs.retrieve(created[1].id)
    assert isinstance(shown, Job) and shown.name == "job-1" and shown.config["seed"] == 1

    first = client.jobs.list(limit=2)
    assert [j.id for j in first.data] == [created[2].id, created[1].id]  # newest first
    assert first.has_more
    rest = client.jobs.list(limit=2, cursor=first.next_cursor)
    assert [j.id for j in rest.data] == [created[0].id] and not rest.has_more


def test_errors_are_typed_from_the_envelope(project_client, http, small_config):
    client = project_client("alpha")
    with pytest.raises(keel.UnprocessableEntityError) as bad:
        client.jobs.create(small_config(group_size=1))  # group baseline with one sample
    assert bad.value.status_code == 422 and bad.value.code == "validation_error"
    assert "group_size" in bad.value.detail
    with pytest.raises(keel.UnprocessableEntityError) as unknown:
        client.jobs.create(small_config(learning_rate=1.0))
    assert any("learning_rate" in [str(x) for x in e["loc"]] for e in unknown.value.errors)
    with pytest.raises(keel.NotFoundError) as missing:
        client.jobs.retrieve("job_does_not_exist")
    assert missing.value.code == "not_found"
    anonymous = keel.Client(base_url="http://testserver", api_key="wrong", http_client=http)
    with pytest.raises(keel.AuthenticationError):
        anonymous.jobs.list()


def test_a_project_never_sees_another_projects_job(project_client, small_config):
    alpha, beta = project_client("alpha"), project_client("beta")
    job = alpha.jobs.create(small_config())
    with pytest.raises(keel.NotFoundError):
        beta.jobs.retrieve(job.id)
    with pytest.raises(keel.NotFoundError):
        beta.jobs.cancel(job.id)
    assert beta.jobs.list().data == []


def test_pause_resume_cancel(project_client, small_config):
    client = project_client("alpha")
    job = client.jobs.create(small_config())
    assert client.jobs.pause(job.id).status == "paused"
    assert client.jobs.resume(job.id).status == "queued"
    assert client.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(keel.ConflictError):
        client.jobs.resume(job.id)


def _run_as_worker(sessions, job_id: str, status: str, *, error: str | None = None) -> None:
    """What a worker does to a job: take the lease, write a step, end the run."""
    with session_scope(sessions) as session:
        assert take_lease(session, job_id, "test-worker", lease_timeout_s=60).acquired
        write_step_metrics(session, job_id, 1, {"reward/mean": 0.5})
        assert finish_job(session, job_id, "test-worker", status, error=error)


def test_wait_returns_a_succeeded_job_and_raises_for_a_failed_one(
    project_client, sessions, small_config
):
    client = project_client("alpha")
    ok, bad = client.jobs.create(small_config()), client.jobs.create(small_config())
    _run_as_worker(sessions, ok.id, "succeeded")
    _run_as_worker(sessions, bad.id, "failed", error="RuntimeError after step 1: boom")
    assert client.jobs.wait(ok.id, timeout_s=5, poll_interval_s=0.01).status == "succeeded"
    with pytest.raises(keel.JobFailedError) as failed:
        client.jobs.wait(bad.id, timeout_s=5, poll_interval_s=0.01)
    assert "boom" in str(failed.value) and failed.value.job.status == "failed"
    pending = client.jobs.create(small_config())
    with pytest.raises(keel.WaitTimeoutError):
        client.jobs.wait(pending.id, timeout_s=0.05, poll_interval_s=0.01)


def test_events_stream_and_resume_from_last_event_id(project_client, sessions, small_config):
    client = project_client("alpha")
    job = client.jobs.create(small_config())
    _run_as_worker(sessions, job.id, "succeeded")
    events = list(client.jobs.events(job.id))
    assert all(isinstance(e, JobEvent) and e.job_id == job.id for e in events)
    kinds = [(e.type, e.data.get("status")) for e in events]
    assert kinds == [
        ("status", "queued"),
        ("status", "running"),
        ("metrics", None),
        ("status", "succeeded"),
    ]
    assert events[2].data["values"] == {"reward/mean": 0.5}
    later = list(client.jobs.events(job.id, last_event_id=str(events[1].id)))
    assert [e.id for e in later] == [e.id for e in events[2:]]


def test_events_without_follow_are_the_history_so_far(project_client, sessions, small_config):
    client = project_client("alpha")
    job = client.jobs.create(small_config())
    # Queued, nothing else yet: a followed stream would wait for the job to end.
    assert [e.data["status"] for e in client.jobs.events(job.id, follow=False)] == ["queued"]


def test_async_client_has_the_same_results(
    project_client, async_client_for, sessions, small_config
):
    sync = project_client("alpha")
    key = sync._transport.config.api_key

    async def scenario() -> tuple[list[str], list[str], str]:
        async with async_client_for(key) as client:
            job = await client.jobs.create(small_config(), name="async")
            listed = [j.id for j in (await client.jobs.list()).data]
            _run_as_worker(sessions, job.id, "failed", error="ValueError after step 1: nope")
            events = [e.type async for e in client.jobs.events(job.id)]
            try:
                await client.jobs.wait(job.id, timeout_s=5, poll_interval_s=0.01)
            except keel.JobFailedError as exc:
                return listed, events, str(exc)
            return listed, events, "no error"

    listed, events, error = asyncio.run(scenario())
    assert listed == [j.id for j in sync.jobs.list().data]
    assert events == ["status", "status", "metrics", "status"]
    assert "nope" in error
