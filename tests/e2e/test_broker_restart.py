"""The broker restarting mid-job, with real processes: a Redis of its own (no persistence, so
a restart loses every message), the API and a Celery worker on PostgreSQL.

The running job never needs the broker: it ends with every step once. While Redis is down a new
job is stored, stays queued and is answered at once with a 503 (every broker wait is bounded);
once Redis is back, the same request again (as the SDK's retry sends it, same Idempotency-Key)
answers that job and sends it, and the same API and worker, never restarted, run it and the next.
"""

from __future__ import annotations

import signal
import time

import httpx
import pytest

import keel

pytestmark = [pytest.mark.services, pytest.mark.slow]

STEPS = 8
CONFIG = {"steps": STEPS, "prompts_per_step": 4, "group_size": 4, "rollout": {"max_new_tokens": 24}}


def _redis(stack, helpers, port: int):
    """A Redis of the test's own on `port`, without persistence; returns once it accepts."""
    cmd = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = stack.start(f"redis-{time.monotonic_ns()}", cmd)
    helpers.wait_until(lambda: "Ready to accept" in proc.output(), timeout_s=30, what="redis")
    return proc


def test_a_broker_restart_mid_job_loses_nothing(production_stack, helpers):
    wait_until = helpers.wait_until
    port = helpers.free_port()
    redis = _redis(production_stack, helpers, port)
    production_stack.env["KEEL_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    base_url = production_stack.api()
    production_stack.worker("w1")
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key, max_retries=0)
    job = client.jobs.create(helpers.job_config(**CONFIG), reward={"type": "builtin"})
    wait_until(lambda: client.jobs.retrieve(job.id).step >= 2, timeout_s=180, what="step 2")

    redis.kill(signal.SIGKILL)
    assert client.jobs.retrieve(job.id).step < STEPS, "the outage came too late"
    # A job created meanwhile is stored and stays queued (not failed): 503, at once.
    body = {"config": helpers.job_config(steps=1), "reward": {"type": "builtin"}}
    headers = {"Authorization": f"Bearer {helpers.admin_key}", "Idempotency-Key": "outage-1"}
    started = time.monotonic()
    refused = httpx.post(f"{base_url}/v1/jobs", json=body, headers=headers, timeout=60)
    assert refused.status_code == 503 and time.monotonic() - started < 30, refused.text
    stored = refused.json()["state"]["job_id"]
    waiting = client.jobs.retrieve(stored)
    assert waiting.status == "queued" and "the broker refused its message" in waiting.error
    time.sleep(3)
    _redis(production_stack, helpers, port)
    # The same request again (as the SDK's retry sends it) answers the stored job and sends it.
    replayed = httpx.post(f"{base_url}/v1/jobs", json=body, headers=headers, timeout=60)
    assert replayed.status_code in (200, 201) and replayed.json()["id"] == stored, replayed.text
    ran = client.jobs.wait(stored, timeout_s=180, poll_interval_s=0.5)
    assert (ran.status, ran.error) == ("succeeded", None)  # the worker cleared the note

    done = client.jobs.wait(job.id, timeout_s=300, poll_interval_s=0.5)
    assert (done.status, done.step, done.attempts) == ("succeeded", STEPS, 1)
    helpers.assert_every_step_once(client, job.id, steps=STEPS)
    after = client.jobs.create(helpers.job_config(steps=1), reward={"type": "builtin"})
    assert client.jobs.wait(after.id, timeout_s=180, poll_interval_s=0.5).status == "succeeded"
