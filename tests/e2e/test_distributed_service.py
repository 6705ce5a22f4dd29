"""A job of 2 ranks end to end: `keel server` + a `keel worker` advertising 2 processes on
PostgreSQL and Redis, rewards from a separate reward service through a signed webhook (rank 0
scores, the other rank receives them), the SDK creating and waiting. The worker's advertisement is
what job creation checks: asking for more processes than it runs is a 422 naming the limit."""

from __future__ import annotations

import pytest

import keel

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_a_two_rank_job_through_the_api_and_sdk(production_stack, helpers):
    production_stack.env.update(KEEL_WORKER_MAX_PROCESSES="2", KEEL_GROUP_STALL_TIMEOUT_S="300")
    base_url = production_stack.api()
    production_stack.worker("w1")
    service = production_stack.reward_service(base_url)
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)

    with pytest.raises(keel.UnprocessableEntityError) as refused:
        client.jobs.create(helpers.job_config(distributed={"processes": 4}))
    assert "the live workers run at most 2 per job" in refused.value.detail

    config = helpers.job_config(distributed={"processes": 2})
    job = client.jobs.create(config, reward=helpers.webhook_reward(service))
    service.give_token(job.reward_token)
    done = client.jobs.wait(job.id, timeout_s=300, poll_interval_s=0.5)

    assert (done.status, done.step, done.policy_version, done.attempts) == ("succeeded", 2, 2, 1)
    helpers.assert_every_step_once(client, job.id, steps=2)
    posted = service.posted()
    assert len(posted) == 8  # 2 steps × 2 prompts × 2 samples, each scored once (by rank 0)
    helpers.assert_rewards_kept(client, job.id, posted)
    assert sorted(c.step for c in client.checkpoints.list(job.id).data) == [1, 2]


def test_a_job_of_two_machines_served_by_two_workers(production_stack, helpers):
    """Two `keel worker` processes stand for two machines of one rank each: the one that leases
    the job hosts the rendezvous and sends a `keel.join_job`, which the other takes and joins."""
    production_stack.env.update(KEEL_WORKER_MAX_PROCESSES="1", KEEL_GROUP_STALL_TIMEOUT_S="300")
    base_url = production_stack.api()
    workers = [production_stack.worker("w1"), production_stack.worker("w2")]
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)

    with pytest.raises(keel.UnprocessableEntityError) as refused:
        client.jobs.create(helpers.job_config(distributed={"nodes": 3}))
    assert "2 live worker(s) advertise that many" in refused.value.detail

    job = client.jobs.create(helpers.job_config(distributed={"nodes": 2}))
    done = client.jobs.wait(job.id, timeout_s=300, poll_interval_s=0.5)
    assert (done.status, done.step, done.attempts) == ("succeeded", 2, 1)
    helpers.assert_every_step_once(client, job.id, steps=2)
    # The joining worker ends its ranks' watch a moment after the lease holder ends the job.
    joined_line = f"keel.join_job({job.id}) -> succeeded"
    helpers.wait_until(
        lambda: any(joined_line in w.output() for w in workers), timeout_s=30, what="the join"
    )
    logs = [w.output() for w in workers]
    held = [f"keel.run_job({job.id}) -> succeeded" in log for log in logs]
    joined = [joined_line in log for log in logs]
    assert sorted(zip(held, joined, strict=True)) == [(False, True), (True, False)], logs
