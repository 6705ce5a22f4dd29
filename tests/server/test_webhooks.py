"""Webhook signing (HMAC-SHA256 over timestamp + body) and delivery with retries."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import httpx
import pytest

from keel.types.rewards import WebhookPayload, WebhookRollout
from keel_server import webhooks


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.sign("s3cret", 1700000000, body) == "v1=" + expected


def test_verify_accepts_fresh_and_rejects_tampered_or_stale() -> None:
    body = b'{"rewards": []}'
    headers = webhooks.signed_headers("k" * 20, body, job_id="job_1", timestamp=1000)
    assert webhooks.verify("k" * 20, headers, body, now=1010)
    lower = {k.lower(): v for k, v in headers.items()}
    assert webhooks.verify("k" * 20, lower, body, now=1010)
    assert not webhooks.verify("k" * 20, headers, body + b" ", now=1010)
    assert not webhooks.verify("other-secret-xxxxx", headers, body, now=1010)
    assert not webhooks.verify("k" * 20, headers, body, now=1000 + 301)
    assert not webhooks.verify("k" * 20, {}, body, now=1000)


def _payload() -> WebhookPayload:
    rollout = WebhookRollout(
        id="ro_1", step=1, group_index=0, sample_index=0, prompt="2+2", completion="4",
        token_count=1, deadline_at=datetime(2030, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    return WebhookPayload(job_id="job_1", step=1, rollouts=[rollout])


def test_deliver_retries_then_returns_inline_rewards() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert webhooks.verify("secret-0123456789", request.headers, request.content)
        if len(seen) < 3:
            return httpx.Response(503)
        return httpx.Response(200, json={"rewards": [{"rollout_id": "ro_1", "value": 1.0}]})

    waits = []
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        reply = webhooks.deliver(
            "http://rewards.test/hook", "secret-0123456789", _payload(), timeout_s=1,
            max_attempts=5, backoff_s=0.5, client=client, sleep=waits.append,
        )  # fmt: skip
    assert [(r.rollout_id, r.value) for r in reply.rewards] == [("ro_1", 1.0)]
    assert waits == [0.5, 1.0]
    assert json.loads(seen[0].content)["rollouts"][0]["id"] == "ro_1"
    assert seen[0].headers[webhooks.JOB_HEADER] == "job_1"


def test_deliver_gives_up_and_accepts_empty_reply() -> None:
    failing = httpx.MockTransport(lambda r: httpx.Response(500))
    with (
        httpx.Client(transport=failing) as client,
        pytest.raises(webhooks.WebhookDeliveryError, match="2 attempts"),
    ):
        webhooks.deliver(
            "http://x/h", "s" * 16, _payload(), timeout_s=1, max_attempts=2,
            backoff_s=0, client=client, sleep=lambda _: None,
        )  # fmt: skip
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(202))) as client:
        reply = webhooks.deliver(
            "http://x/h", "s" * 16, _payload(), timeout_s=1, max_attempts=1, backoff_s=0,
            client=client,
        )  # fmt: skip
    assert reply.rewards == []
