"""Faults with real processes on PostgreSQL and Redis.

- A worker SIGKILLed inside a step (while it generates, and while it updates) is replaced by the
  second worker already running, and the job finishes with every step exactly once, every posted
  reward kept, and the same weights and metrics as an uninterrupted run of the same seed.
- A duplicate `keel.run_job` delivery exits without touching the job; a reward after its
  deadline gets a clear 409, and a job whose every reward expired fails with the reason.
"""

from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa
import torch

import keel
from keel_server.platform.queue import enqueue_run_job, make_producer
from keel_server.platform.settings import Settings

pytestmark = [pytest.mark.services, pytest.mark.slow]

KILL_STEP = 3  # 1-based: the step inside which the worker dies
STEPS = 4
# Long enough phases for the poll below to land inside them: 4 × 4 rollouts of up to 24 tokens,
# an update of 8 micro-batches.
CONFIG = {
    "steps": STEPS,
    "prompts_per_step": 4,
    "group_size": 4,
    "micro_batch_size": 2,
    "rollout": {"max_new_tokens": 24},
    "seed": 7,
}


@pytest.mark.parametrize("phase", ["generation", "update"])
def test_sigkill_inside_a_step_then_the_job_ends_as_if_never_killed(
    production_stack, helpers, tmp_path, phase
):
    base_url = production_stack.api()
    workers = [production_stack.worker("w1"), production_stack.worker("w2")]
    service = production_stack.reward_service(base_url)
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    reward = helpers.webhook_reward(service)
    job = client.jobs.create(helpers.job_config(**CONFIG), reward=reward)
    service.give_token(job.reward_token)
    holder = helpers.wait_until(
        lambda: next((w for w in workers if f"job {job.id}: lease taken" in w.output()), None),
        timeout_s=60,
        what="a worker on the job",
    )

    inside = _in_generation if phase == "generation" else _in_update
    helpers.wait_until(
        lambda: inside(client, job.id),
        timeout_s=240,
        interval_s=0.02,
        what=f"the {phase} of step {KILL_STEP}",
    )
    holder.kill(signal.SIGKILL)  # the worker and its pool process; the other one is idle
    killed_at = client.jobs.retrieve(job.id)
    assert (killed_at.status, killed_at.step) == ("running", KILL_STEP - 1), "killed too late"
    assert inside(client, job.id), f"the kill did not land in the {phase}"

    done = client.jobs.wait(job.id, timeout_s=300, poll_interval_s=0.5)
    assert (done.status, done.step, done.policy_version, done.attempts) == (
        "succeeded",
        STEPS,
        STEPS,
        2,
    )
    helpers.assert_every_step_once(client, job.id, steps=STEPS)
    helpers.assert_rewards_kept(client, job.id, service.posted())
    rollouts = client.rollouts.list(job.id, limit=500).data
    assert len(rollouts) == STEPS * 16 and {r.status for r in rollouts} == {"rewarded"}

    # The same job, never interrupted: the same metrics and bit-identical weights.
    again = client.jobs.create(helpers.job_config(**CONFIG), reward=reward)
    service.give_token(again.reward_token)
    assert client.jobs.wait(again.id, timeout_s=300, poll_interval_s=0.5).status == "succeeded"
    assert _step_metrics(client, job.id) == _step_metrics(client, again.id)
    _, resumed = helpers.load_checkpoint(client, job.id, tmp_path / "resumed")
    _, uninterrupted = helpers.load_checkpoint(client, again.id, tmp_path / "uninterrupted")
    expected = uninterrupted.state_dict()
    for name, tensor in resumed.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def _in_generation(client, job_id: str) -> bool:
    """Step KILL_STEP - 1 is done and checkpointed; step KILL_STEP has no rollouts yet."""
    job = client.jobs.retrieve(job_id)
    if job.step != KILL_STEP - 1 or job.status != "running":
        return False
    saved = [c.step for c in client.checkpoints.list(job_id).data]
    return KILL_STEP - 1 in saved and not client.rollouts.list(job_id, step=KILL_STEP).data


def _in_update(client, job_id: str) -> bool:
    """Every rollout of step KILL_STEP is rewarded and the step's progress is not recorded."""
    rollouts = client.rollouts.list(job_id, step=KILL_STEP, limit=100).data
    if len(rollouts) < 16 or any(r.status != "rewarded" for r in rollouts):
        return False
    job = client.jobs.retrieve(job_id)
    return job.status == "running" and job.step == KILL_STEP - 1


def _step_metrics(client, job_id: str) -> dict[tuple[int, str], float]:
    """Every metric of every step except wall-clock timings."""
    rows = client.metrics.list(job_id, limit=10_000)
    return {(m.step, m.name): m.value for m in rows if not m.name.startswith("time/")}


def test_duplicate_delivery_exits_and_late_reward_is_refused(production_stack, helpers):
    base_url = production_stack.api()
    workers = [production_stack.worker("w1"), production_stack.worker("w2")]
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    reward = {"type": "external", "deadline_s": 8}
    job = client.jobs.create(helpers.job_config(steps=1), reward=reward)
    helpers.wait_until(
        lambda: client.rollouts.list(job.id).data, timeout_s=120, what="step 1 rollouts"
    )
    before = _lease(production_stack, job.id)

    # The job waits for rewards while one worker holds its lease; the idle worker receives a
    # duplicate delivery and must leave the job alone.
    settings = Settings(
        **{k[5:].lower(): v for k, v in production_stack.env.items() if k.startswith("KEEL_")}
    )
    enqueue_run_job(make_producer(settings), settings, job.id)
    helpers.wait_until(
        lambda: any("not taken (held)" in w.output() for w in workers),
        timeout_s=60,
        what="the duplicate to exit",
    )
    after = _lease(production_stack, job.id)
    assert after == before and after["attempts"] == 1

    # Nobody rewards step 1: its rollouts expire, and a late reward is a clear conflict.
    rollout = client.rollouts.list(job.id).data[0]
    helpers.wait_until(
        lambda: client.rollouts.retrieve(rollout.id).status == "expired",
        timeout_s=60,
        what="the deadline",
    )
    token_client = keel.Client(base_url=base_url, api_key=job.reward_token, max_retries=0)
    with pytest.raises(keel.ConflictError) as late:
        token_client.rewards.create(rollout.id, 1.0)
    assert late.value.code == "rollout_not_awaiting_reward"
    assert late.value.state["status"] == "expired" and "deadline" in late.value.detail
    # Its only step trained on nothing: the job fails and says why.
    with pytest.raises(keel.JobFailedError, match="trained on nothing"):
        client.jobs.wait(job.id, timeout_s=120, poll_interval_s=0.3)
    dropped = client.metrics.list(job.id, name="groups/dropped")
    assert [(m.step, m.value) for m in dropped] == [(1, 2.0)]
    assert client.jobs.retrieve(job.id).status == "failed"


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
