"""No silent hang, with real processes on PostgreSQL and Redis (docs/concepts/jobs.md §3).

A job whose phase runs past its bound fails with the phase named, and a cancel that the step does
not act on ends the job cancelled; either way the worker's pool process is killed and replaced, so
the same worker then runs the next job to the end.

The stuck step is a real one: generation of 64 rows × up to 600 tokens, with the generate phase
bounded far below what it takes (`KEEL_PHASE_TIMEOUTS_S`), or a cancel's grace
(`KEEL_STALL_GRACE_S`) far below it.
"""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

import keel

pytestmark = [pytest.mark.services, pytest.mark.slow]

LONG_GENERATION = {
    "prompts_per_step": 8,
    "group_size": 8,
    "micro_batch_size": 8,
    "rollout": {"max_new_tokens": 600},
    "steps": 3,
}


def _ended(helpers, client, job_id: str, *, timeout_s: float):
    def terminal():
        job = client.jobs.retrieve(job_id)
        return job if job.status in ("succeeded", "failed", "cancelled", "paused") else None

    return helpers.wait_until(terminal, timeout_s=timeout_s, what=f"job {job_id} to end")


def _pool_processes_killed(worker) -> int:
    return len(re.findall(r"exited with 'signal 9 \(SIGKILL\)'", worker.output()))


def test_a_phase_past_its_bound_fails_the_job_and_the_worker_runs_on(production_stack, helpers):
    production_stack.env["KEEL_PHASE_TIMEOUTS_S"] = json.dumps({"generate": 0.5})
    base_url = production_stack.api()
    worker = production_stack.worker("w1")
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    stuck = client.jobs.create(helpers.job_config(**LONG_GENERATION), reward={"type": "builtin"})

    ended = _ended(helpers, client, stuck.id, timeout_s=120)
    assert ended.status == "failed", ended
    assert "no progress for 0.5 s in phase 'generate'" in ended.error
    assert "after step 0" in ended.error and ended.phase is None
    helpers.wait_until(
        lambda: _pool_processes_killed(worker) == 1, timeout_s=30, what="the pool process killed"
    )

    # The same worker, with a fresh pool process, runs a job whose generation fits the bound.
    quick = client.jobs.create(helpers.job_config(steps=1), reward={"type": "builtin"})
    done = client.jobs.wait(quick.id, timeout_s=120, poll_interval_s=0.2)
    assert done.status == "succeeded", done
    assert worker.process.poll() is None
    assert client.jobs.retrieve(stuck.id).status == "failed"  # the redelivery left it alone


def test_a_cancel_the_step_does_not_act_on_ends_the_job_cancelled(production_stack, helpers):
    production_stack.env["KEEL_STALL_GRACE_S"] = "1"
    base_url = production_stack.api()
    worker = production_stack.worker("w1")
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    job = client.jobs.create(helpers.job_config(**LONG_GENERATION), reward={"type": "builtin"})
    helpers.wait_until(
        lambda: client.jobs.retrieve(job.id).phase == "generate",
        timeout_s=120,
        interval_s=0.05,
        what="the job generating",
    )
    client.jobs.cancel(job.id)

    ended = _ended(helpers, client, job.id, timeout_s=60)
    assert (ended.status, ended.step, ended.error) == ("cancelled", 0, None)
    reasons = [e.data.get("reason") for e in client.jobs.events(job.id, follow=False)]
    assert any(r and "did not stop within 1 s of the cancel request" in r for r in reasons)
    helpers.wait_until(
        lambda: _pool_processes_killed(worker) == 1, timeout_s=30, what="the pool process killed"
    )
    quick = client.jobs.create(helpers.job_config(steps=1), reward={"type": "builtin"})
    assert client.jobs.wait(quick.id, timeout_s=120, poll_interval_s=0.2).status == "succeeded"


def test_a_stopped_worker_loses_its_job_to_another_and_never_writes_again(
    production_stack, helpers
):
    base_url = production_stack.api()
    workers = [production_stack.worker("w1"), production_stack.worker("w2")]
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    config = helpers.job_config(steps=6, prompts_per_step=4, group_size=4)
    job = client.jobs.create(config, reward={"type": "builtin"})
    holder = helpers.wait_until(
        lambda: next((w for w in workers if f"job {job.id}: lease taken" in w.output()), None),
        timeout_s=60,
        what="a worker on the job",
    )
    other = next(w for w in workers if w is not holder)
    helpers.wait_until(lambda: client.jobs.retrieve(job.id).step >= 1, timeout_s=120, what="step")

    os.killpg(holder.process.pid, signal.SIGSTOP)  # alive, but neither training nor beating
    stopped_at = client.jobs.retrieve(job.id).step
    try:
        # KEEL_LEASE_TIMEOUT_S is 4 s here: the other worker takes the job over and ends it.
        done = client.jobs.wait(job.id, timeout_s=180, poll_interval_s=0.5)
    finally:
        os.killpg(holder.process.pid, signal.SIGCONT)
    assert (done.status, done.step, done.attempts) == ("succeeded", 6, 2)
    assert stopped_at < 6 and f"job {job.id}: lease taken" in other.output()
    helpers.assert_every_step_once(client, job.id, steps=6)
    # Woken up, the old holder finds its lease gone and leaves the finished job alone.
    helpers.wait_until(
        lambda: f"job {job.id}: lease lost" in holder.output(), timeout_s=60, what="lease lost"
    )
    after = client.jobs.retrieve(job.id)
    assert (after.status, after.step, after.attempts) == ("succeeded", 6, 2)
