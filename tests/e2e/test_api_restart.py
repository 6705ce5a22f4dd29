"""The API restarting mid-job while an event stream and reward posts are in flight, with real
processes on PostgreSQL and Redis: the API is SIGKILLed and started again on the same port a few
seconds later.

The SDK's event stream resumes from its last event id (every event exactly once, in order, up to
the job's end), the reward poster's requests are retried through the outage (every reward it
meant to post is stored once), and the job, whose worker never needed the API, ends with every
step once.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

import keel

pytestmark = [pytest.mark.services, pytest.mark.slow]

STEPS = 6
CONFIG = {"steps": STEPS, "prompts_per_step": 2, "group_size": 4}


def _start_api(stack, helpers, port: int):
    proc = stack.start(
        f"api-{time.monotonic_ns()}", helpers.keel_cmd("server", "--port", str(port))
    )

    def up() -> bool:
        assert proc.process.poll() is None, proc.output()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    helpers.wait_until(up, timeout_s=90, what="the API")
    return proc


def _post_rewards(client: keel.Client, job_id: str, posted: dict[str, float], done) -> None:
    """The job's external reward service: score every awaiting rollout by its completion's
    parity, through the SDK (whose retries carry it through the restart)."""
    while not done.is_set():
        awaiting = client.rollouts.list(job_id, status="awaiting_reward", limit=100).data
        scores = {r.id: float(sum(r.completion.encode()) % 2) for r in awaiting}
        if scores:
            for result in client.rewards.batch(scores).results:
                assert result.ok, result
            posted.update(scores)
        done.wait(0.2)


def test_an_api_restart_mid_job_loses_no_event_and_no_reward(production_stack, helpers):
    port = helpers.free_port()
    api = _start_api(production_stack, helpers, port)
    production_stack.worker("w1")
    base_url = f"http://127.0.0.1:{port}"
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    job = client.jobs.create(helpers.job_config(**CONFIG), reward={"type": "external"})

    events: list = []
    follower = threading.Thread(target=lambda: events.extend(client.jobs.events(job.id)))
    follower.start()
    posted: dict[str, float] = {}
    done = threading.Event()
    poster_client = keel.Client(base_url=base_url, api_key=job.reward_token)
    poster = threading.Thread(target=_post_rewards, args=(poster_client, job.id, posted, done))
    poster.start()
    try:
        helpers.wait_until(lambda: client.jobs.retrieve(job.id).step >= 2, timeout_s=180, what="2")
        api.kill(signal.SIGKILL)
        time.sleep(4)  # the worker goes on generating; its rewards wait for the poster
        _start_api(production_stack, helpers, port)
        done_job = client.jobs.wait(job.id, timeout_s=300, poll_interval_s=0.5)
    finally:
        done.set()
        poster.join(60)
    follower.join(60)
    assert not follower.is_alive() and not poster.is_alive()

    assert (done_job.status, done_job.step) == ("succeeded", STEPS)
    helpers.assert_every_step_once(client, job.id, steps=STEPS)
    helpers.assert_rewards_kept(client, job.id, posted)
    assert len(posted) == STEPS * CONFIG["prompts_per_step"] * CONFIG["group_size"]
    # The stream resumed where it broke: every stored event once, in order, to the final one.
    stored = list(client.jobs.events(job.id, follow=False))
    assert [e.id for e in events] == [e.id for e in stored]
    assert events[-1].data.get("status") == "succeeded"
