"""Faults with real processes on PostgreSQL and Redis: a worker SIGKILLed mid-job is replaced
and the job finishes with every step exactly once and every posted reward kept; a duplicate
`keel.run_job` delivery exits without touching the job; a reward after its deadline gets a clear
409."""

from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa

import keel
from keel_server.queue import enqueue_run_job, make_producer
from keel_server.settings import Settings

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_sigkill_worker_mid_job_then_another_finishes_it(production_stack, helpers):
    base_url = production_stack.api()
    first = production_stack.worker("w1")
    service = production_stack.reward_service(base_url)
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    job = client.jobs.create(helpers.job_config(steps=4), reward=helpers.webhook_reward(service))
    service.give_token(job.reward_token)

    helpers.wait_until(lambda: client.jobs.retrieve(job.id).step >= 2, timeout_s=180,
                       what="two steps done", interval_s=0.1)  # fmt: skip
    first.kill(signal.SIGKILL)  # the worker and its pool process, mid-step 3
    killed_at = client.jobs.retrieve(job.id)
    assert killed_at.status == "running" and killed_at.step < 4

    production_stack.worker("w2")
    done = client.jobs.wait(job.id, timeout_s=240, poll_interval_s=0.5)
    assert (done.status, done.step, done.policy_version) == ("succeeded", 4, 4)
    assert done.attempts == 2
    helpers.assert_every_step_once(client, job.id, steps=4)
    helpers.assert_rewards_kept(client, job.id, service.posted())
    rollouts = client.rollouts.list(job.id, limit=500).data
    assert len(rollouts) == 16 and {r.status for r in rollouts} == {"rewarded"}


def test_duplicate_delivery_exits_and_late_reward_is_refused(production_stack, helpers):
    base_url = production_stack.api()
    workers = [production_stack.worker("w1"), production_stack.worker("w2")]
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    reward = {"type": "external", "deadline_s": 8}
    job = client.jobs.create(helpers.job_config(steps=1), reward=reward)
    helpers.wait_until(lambda: client.rollouts.list(job.id).data, timeout_s=120,
                       what="step 1 rollouts")  # fmt: skip
    before = _lease(production_stack, job.id)

    # The job waits for rewards while one worker holds its lease; the idle worker receives a
    # duplicate delivery and must leave the job alone.
    settings = Settings(**{k[5:].lower(): v for k, v in production_stack.env.items()
                           if k.startswith("KEEL_")})  # fmt: skip
    enqueue_run_job(make_producer(settings), settings, job.id)
    helpers.wait_until(lambda: any("not taken (held)" in w.output() for w in workers),
                       timeout_s=60, what="the duplicate to exit")  # fmt: skip
    after = _lease(production_stack, job.id)
    assert after == before and after["attempts"] == 1

    # Nobody rewards step 1: its rollouts expire, and a late reward is a clear conflict.
    rollout = client.rollouts.list(job.id).data[0]
    helpers.wait_until(lambda: client.rollouts.retrieve(rollout.id).status == "expired",
                       timeout_s=60, what="the deadline")  # fmt: skip
    token_client = keel.Client(base_url=base_url, api_key=job.reward_token, max_retries=0)
    with pytest.raises(keel.ConflictError) as late:
        token_client.rewards.create(rollout.id, 1.0)
    assert late.value.code == "rollout_not_awaiting_reward"
    assert late.value.state["status"] == "expired" and "deadline" in late.value.detail
    done = client.jobs.wait(job.id, timeout_s=120, poll_interval_s=0.3)
    dropped = client.metrics.list(job.id, name="groups/dropped")
    assert done.status == "succeeded" and [(m.step, m.value) for m in dropped] == [(1, 2.0)]


def _lease(stack, job_id: str) -> dict:
    engine = sa.create_engine(stack.env["KEEL_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT lease_owner, attempts FROM jobs WHERE id = :id"), {"id": job_id}
            ).one()
        return {"lease_owner": row.lease_owner, "attempts": row.attempts}
    finally:
        engine.dispose()
