"""The stability guard through the production path: `keel server` + a `keel worker` (Celery) on
PostgreSQL and Redis. A job whose guard pauses on a deliberately low threshold pauses by itself,
shows the reason in `jobs.retrieve` and on its event stream, resumes through the SDK with a new
learning rate, and finishes.

The threshold (`helpers.guard_pause_job_config`): a TIS cap of 0.5 truncates every token of an
fp32 rollout, so `is/truncated_frac` is 1 on the first step, over the trigger's 0.5; the resume
also restores the paper's cap, under which nothing is truncated.
"""

from __future__ import annotations

import pytest

import keel

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_guard_pauses_with_its_reason_then_resumes_with_a_new_lr(production_stack, helpers):
    base_url = production_stack.api()
    production_stack.worker("w1")
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    job = client.jobs.create(helpers.guard_pause_job_config())
    paused = helpers.wait_until(
        lambda: (j := client.jobs.retrieve(job.id)).status == "paused" and j,
        timeout_s=240,
        what="the guard's pause",
    )
    assert paused.step == 1 and paused.guard.triggers == 1
    assert paused.guard.last_reason.startswith("is_fraction at step 1: IS-corrected token")
    events = []
    for event in client.jobs.events(job.id):
        events.append(event)
        if event.type == "status" and event.data["status"] == "paused":
            break
    [guard] = [e.data for e in events if e.type == "guard"]
    assert (guard["trigger"], guard["action"], guard["step"]) == ("is_fraction", "pause", 1)
    assert events[-1].data["reason"] == paused.guard.last_reason

    client.jobs.resume(job.id, lr=5e-4, algorithm={"name": "minirl"})
    done = client.jobs.wait(job.id, timeout_s=240, poll_interval_s=0.5)
    assert (done.status, done.step, done.attempts) == ("succeeded", 2, 2)
    lr = {m.step: m.value for m in client.metrics.list(job.id, name="optim/lr")}
    assert lr == {1: 1e-3, 2: 5e-4}
    fired = {m.step: m.value for m in client.metrics.list(job.id, name="guard/fired")}
    assert fired == {1: 1.0, 2: 0.0}
