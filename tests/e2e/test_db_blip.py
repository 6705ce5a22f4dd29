"""A database blip on the production path: PostgreSQL drops every connection of the service's
database (`pg_terminate_backend`, as a restart or a failover does) several times while a job
runs on a real worker.

The job must not fail: the worker's writes that meet a dropped connection are retried after the
database answers again (or the step re-runs from the last checkpoint), and the API's requests
during the blip answer 503 with `Retry-After` (the SDK retries them) instead of a 500.
"""

from __future__ import annotations

import time

import psycopg
import pytest

import keel

pytestmark = [pytest.mark.services, pytest.mark.slow]

STEPS = 12
BURST_S = 3.0  # one round of terminations, long enough to span a step's writes


def _terminate_all(dsn: str) -> int:
    """Drop every other connection to the database of `dsn`; returns how many were dropped."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return sum(1 for (dropped,) in rows if dropped)


def test_a_database_blip_mid_job_does_not_fail_it(production_stack, helpers):
    base_url = production_stack.api()
    worker = production_stack.worker("w1")
    dsn = production_stack.env["KEEL_DATABASE_URL"].replace("+psycopg", "", 1)
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key, max_retries=8)
    job = client.jobs.create(helpers.job_config(steps=STEPS), reward={"type": "builtin"})
    helpers.wait_until(lambda: client.jobs.retrieve(job.id).step >= 1, timeout_s=240, what="step 1")

    dropped = 0
    # Rounds of terminations until one has landed in the job loop mid-step (the worker says
    # "database blip" when it resumes), while steps remain. The first terminations of a round
    # catch pooled idle connections; the later ones catch connections the worker and the API
    # have just reopened, mid-transaction.
    while "database blip" not in worker.output():
        step = client.jobs.retrieve(job.id).step
        if step >= STEPS - 1:
            break
        ends = time.monotonic() + BURST_S
        while time.monotonic() < ends:
            dropped += _terminate_all(dsn)
            time.sleep(0.02)
        helpers.wait_until(
            lambda step=step: _past(client, job.id, step),
            timeout_s=180,
            what=f"a step after {step}",
        )
    assert dropped > 0, "no connection was dropped: the test did not test anything"
    assert "database blip" in worker.output(), "no blip reached the worker mid-step"

    done = client.jobs.wait(job.id, timeout_s=300, poll_interval_s=0.5)
    assert (done.status, done.step, done.error) == ("succeeded", STEPS, None)
    helpers.assert_every_step_once(client, job.id, steps=STEPS)
    # What the worker wrote is its user's alone (`keel worker`, not only `keel up`).
    written = list((production_stack.tmp / "home" / "artifacts").rglob("*"))
    assert written and not [p for p in written if p.stat().st_mode & 0o077], "world-readable"


def _past(client: keel.Client, job_id: str, step: int) -> bool:
    job = client.jobs.retrieve(job_id)
    assert job.status in ("queued", "running", "succeeded"), (job.status, job.error)
    return job.step > step
