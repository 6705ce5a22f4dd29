"""Reward sources in `keel.run_job`, in-process on the tiny MoE model: a webhook receiver (a
real HTTP server) that checks the HMAC signature and answers inline, after a 503 first; one
that answers later through the SDK, with a member missing its deadline (its group is dropped,
never scored 0, and the late post gets a clear 409)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from in_process import ADMIN_KEY, BASE_URL, job_settings
from job_configs import tiny_job_config

import keel
from keel.webhooks import verify
from keel_server.api.app import create_app
from keel_server.platform.settings import Settings
from keel_worker.jobrunner.runner import run_job

SECRET = "webhook-secret-0123456789abcdef"

pytestmark = pytest.mark.slow


job_config = tiny_job_config


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    # The receivers below are local.
    return job_settings(sqlite_url, tmp_path, webhook_backoff_s=0.05, webhook_allow="127.0.0.1")


class Receiver:
    """A webhook endpoint: verifies each delivery, then answers with `reply(payload)` (a
    status and a JSON body)."""

    def __init__(self, reply: Callable[[dict], tuple[int, dict]]) -> None:
        self.reply = reply
        self.deliveries: list[dict] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not verify(SECRET, dict(self.headers), body):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                payload = json.loads(body)
                receiver.deliveries.append(payload)
                status, answer = receiver.reply(payload)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


def test_webhook_answers_inline_after_a_retry(sdk, settings):
    calls = {"n": 0}

    def reply(payload: dict) -> tuple[int, dict]:
        calls["n"] += 1
        if calls["n"] == 1:
            return 503, {}  # the first delivery fails: the worker retries with backoff
        rewards = [
            {"rollout_id": r["id"], "value": float(r["group_index"] == 0)}
            for r in payload["rollouts"]
        ]
        return 200, {"rewards": rewards}

    receiver = Receiver(reply)
    try:
        reward = {"type": "webhook", "url": receiver.url, "secret": SECRET}
        job = sdk.jobs.create(job_config(), reward=reward)
        assert run_job(job.id, settings).status == "succeeded"
    finally:
        receiver.close()
    assert receiver.bad_signatures == 0
    assert [d["step"] for d in receiver.deliveries] == [1, 1, 2]  # step 1 delivered twice
    rollouts = sdk.rollouts.list(job.id).data
    assert len(rollouts) == 8
    assert all(r.status == "rewarded" and r.reward == float(r.group_index == 0) for r in rollouts)
    dropped = sdk.metrics.list(job.id, name="groups/dropped")
    assert [(m.step, m.value) for m in dropped] == [(1, 0.0), (2, 0.0)]


@pytest.mark.parametrize("drop", [True, False])
def test_rewards_posted_later_and_a_missed_deadline(sdk, settings, drop):
    receiver = Receiver(lambda payload: (202, {}))
    reward = {
        "type": "webhook",
        "url": receiver.url,
        "secret": SECRET,
        "deadline_s": 1.5,
        "drop_incomplete_groups": drop,
    }
    job = sdk.jobs.create(job_config(group_size=3, micro_batch_size=6), reward=reward)
    worker = threading.Thread(target=lambda: run_job(job.id, settings))
    worker.start()
    service = keel.Client(
        base_url=BASE_URL, api_key=job.reward_token, http_client=sdk._transport.http, max_retries=0
    )
    try:
        late_id = _score_each_step(receiver, service)
    finally:
        worker.join(120)
        receiver.close()
    assert sdk.jobs.retrieve(job.id).status == "succeeded"
    # Step 1: one member of group 1 missed its deadline, so group 1 is dropped, not zeroed; or,
    # with drop_incomplete_groups off, trains on its two rewarded members.
    metrics = {(m.step, m.name): m.value for m in sdk.metrics.list(job.id)}
    assert metrics[(1, "rewards/expired")] == 1.0 and metrics[(1, "reward/missing")] == 1.0
    assert (metrics[(1, "groups/dropped")], metrics[(1, "groups/partial")]) == (
        (1.0, 0.0) if drop else (0.0, 1.0)
    )
    assert metrics[(2, "groups/dropped")] == metrics[(2, "groups/partial")] == 0.0
    late = sdk.rollouts.retrieve(late_id)
    assert (late.status, late.reward) == ("expired", None)
    with pytest.raises(keel.ConflictError) as refused:
        service.rewards.create(late_id, 1.0)
    assert refused.value.code == "rollout_not_awaiting_reward"


def test_a_job_whose_every_reward_expired_fails_with_a_reason(sdk, settings):
    reward = {"type": "external", "deadline_s": 0.5}  # nobody posts: every rollout expires
    job = sdk.jobs.create(job_config(), reward=reward)
    outcome = run_job(job.id, settings)
    failed = sdk.jobs.retrieve(job.id)
    assert (outcome.status, failed.status, failed.step) == ("failed", "failed", 2)
    assert "trained on nothing" in failed.error and failed.policy_version == 0
    dropped = [(m.step, m.value) for m in sdk.metrics.list(job.id, name="groups/dropped")]
    assert dropped == [(1, 2.0), (2, 2.0)]
    with pytest.raises(keel.JobFailedError, match="trained on nothing"):
        sdk.jobs.wait(job.id, timeout_s=1)


def _score_each_step(receiver: Receiver, service: keel.Client) -> str:
    """Post rewards for each delivered step; in step 1 leave one rollout of group 1 unscored.
    Returns that rollout's id."""
    late_id = ""
    for step in (1, 2):
        deadline = time.monotonic() + 120
        while len(receiver.deliveries) < step and time.monotonic() < deadline:
            time.sleep(0.02)
        rollouts = receiver.deliveries[step - 1]["rollouts"]
        for r in rollouts:
            if step == 1 and (r["group_index"], r["sample_index"]) == (1, 1):
                late_id = r["id"]
                continue
            service.rewards.create(r["id"], float(r["sample_index"]))
    return late_id


def test_client_prompts_are_waited_for_and_scored_by_a_builtin_verifier(sdk, settings):
    reward = {"type": "builtin", "verifier": "numeric"}
    job = sdk.jobs.create(job_config(), prompts={"type": "client"}, reward=reward)
    worker = threading.Thread(target=lambda: run_job(job.id, settings))
    worker.start()
    time.sleep(1.0)  # the job is running and waiting: it has no prompts yet
    assert sdk.jobs.retrieve(job.id).status == "running" and not sdk.rollouts.list(job.id).data
    prompts = [{"text": f"What is {a} + 1?", "reference": str(a + 1)} for a in range(4)]
    sdk.prompts.create(job.id, prompts[:3])
    time.sleep(0.5)
    sdk.prompts.create(job.id, prompts[3:])
    worker.join(120)
    assert sdk.jobs.retrieve(job.id).status == "succeeded"
    rollouts = sdk.rollouts.list(job.id, limit=100).data
    seen = [(r.step, r.group_index, r.prompt, r.reference) for r in rollouts if r.sample_index == 0]
    assert sorted(seen) == [
        (1, 0, prompts[0]["text"], "1"),
        (1, 1, prompts[1]["text"], "2"),
        (2, 0, prompts[2]["text"], "3"),
        (2, 1, prompts[3]["text"], "4"),
    ]
    assert all(r.status == "rewarded" and r.reward in (0.0, 1.0) for r in rollouts)


def test_a_job_without_client_prompts_says_it_waits_then_pauses_with_the_reason(sdk, settings):
    """No prompt posted: one `prompts` event says what the job waits for (not one per poll),
    and past KEEL_MAX_PROMPT_WAIT_S the job pauses, freeing its worker, with the reason."""
    bounded = settings.model_copy(update={"max_prompt_wait_s": 1.5})
    reward = {"type": "builtin", "verifier": "numeric"}
    job = sdk.jobs.create(job_config(), prompts={"type": "client"}, reward=reward)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(run_job(job.id, bounded)))
    worker.start()
    worker.join(60)
    if worker.is_alive():  # the unbounded wait: end it before failing
        sdk.jobs.cancel(job.id)
        worker.join(30)
        pytest.fail("the job waited for prompts past its bound")
    assert outcome[0].status == "paused"
    events = list(sdk.jobs.events(job.id, follow=False))
    waits = [e.data for e in events if e.type == "prompts"]
    assert waits == [{"waiting_for": 2, "available": 0, "max_wait_s": 1.5}]
    paused = [e.data for e in events if e.type == "status" and e.data["status"] == "paused"]
    assert "no prompts arrived in 1.5 s" in paused[0]["reason"]
    # Posting prompts and resuming carries on.
    sdk.prompts.create(
        job.id, [{"text": f"What is {a} + 1?", "reference": str(a + 1)} for a in range(4)]
    )
    assert sdk.jobs.resume(job.id).status == "queued"
    assert run_job(job.id, bounded).status == "succeeded"


def test_the_operator_cap_on_reward_waiting_fails_the_job(settings, tmp_path):
    capped = settings.model_copy(update={"max_reward_wait_s": 1.0})
    with TestClient(create_app(capped), base_url=BASE_URL) as http:
        sdk = keel.Client(base_url=BASE_URL, api_key=ADMIN_KEY, http_client=http, max_retries=0)
        with pytest.raises(keel.UnprocessableEntityError):  # a deadline past the cap: refused
            sdk.jobs.create(job_config(), reward={"type": "external", "deadline_s": 5.0})
        # Nobody posts: each step waits out its 0.8 s deadline; the second step passes the cap.
        job = sdk.jobs.create(job_config(steps=5), reward={"type": "external", "deadline_s": 0.8})
        started = time.monotonic()
        run_job(job.id, capped)
        final = sdk.jobs.retrieve(job.id)
    assert final.status == "failed"
    assert "KEEL_MAX_REWARD_WAIT_S" in final.error
    assert final.step < 5 and time.monotonic() - started < 60


def test_a_refused_delivery_shows_on_the_job_as_an_event_and_a_metric(sdk, settings):
    receiver = Receiver(lambda payload: (200, {}))
    reward = {"type": "webhook", "url": receiver.url, "secret": SECRET, "deadline_s": 0.5}
    job = sdk.jobs.create(job_config(steps=1), reward=reward)
    # The worker's policy refuses loopback (as a production worker would after a DNS change).
    try:
        run_job(job.id, settings.model_copy(update={"webhook_allow": ""}))
    finally:
        receiver.close()
    assert receiver.deliveries == []
    metrics = {(m.step, m.name): m.value for m in sdk.metrics.list(job.id)}
    assert metrics[(1, "webhook/delivery_failures")] == 1.0
    events = [e for e in sdk.jobs.events(job.id) if e.type == "webhook"]
    assert [(e.data["step"], e.data["delivered"]) for e in events] == [(1, False)]
    assert "KEEL_WEBHOOK_ALLOW" in events[0].data["error"]


def test_a_cancel_ends_a_webhook_delivery_between_attempts(sdk, settings):
    """A receiver answering 503 forever: the backoff grows to its ceiling, and a cancel during
    it ends the job at once, not after the attempts run out."""
    receiver = Receiver(lambda payload: (503, {}))
    slow = settings.model_copy(update={"webhook_backoff_s": 3.0, "webhook_backoff_max_s": 60.0})
    reward = {"type": "webhook", "url": receiver.url, "secret": SECRET, "max_attempts": 20}
    job = sdk.jobs.create(job_config(steps=1), reward=reward)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(run_job(job.id, slow)))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not receiver.deliveries and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.deliveries, "the job never delivered"
        sdk.jobs.cancel(job.id)
        cancelled_at = time.monotonic()
        worker.join(60)
    finally:
        receiver.close()
    # The first backoff is 3 s and the next ones 6, 12, …: the heartbeat (0.2 s) wakes it.
    assert time.monotonic() - cancelled_at < 2.5
    assert outcome[0].status == "cancelled"
    assert len(receiver.deliveries) == 1
    assert not [e for e in sdk.jobs.events(job.id) if e.type == "webhook"]  # not a failure


def test_a_cancel_during_the_last_step_ends_the_job_cancelled(sdk, settings):
    """The heartbeat never runs during this 1-step job (its interval is an hour), so the cancel,
    asked while the step waits for its prompts, is seen only by the check after the last step."""
    deaf = settings.model_copy(update={"heartbeat_interval_s": 3600.0})
    reward = {"type": "builtin", "verifier": "numeric"}
    job = sdk.jobs.create(job_config(steps=1), prompts={"type": "client"}, reward=reward)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(run_job(job.id, deaf)))
    worker.start()
    time.sleep(1.0)  # running, waiting for prompts
    assert sdk.jobs.cancel(job.id).requested == "cancel"
    sdk.prompts.create(
        job.id, [{"text": f"What is {a} + 1?", "reference": str(a + 1)} for a in range(2)]
    )
    worker.join(120)
    assert outcome[0].status == "cancelled"
    assert sdk.jobs.retrieve(job.id).status == "cancelled"
