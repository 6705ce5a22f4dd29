"""Webhook delivery (worker side): retries, the SSRF policy of keel_server.platform.webhook_targets
checked before every attempt, and connections pinned to the checked address."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime

import httpx
import pytest

from keel import webhooks
from keel.types.rewards import WebhookPayload, WebhookRollout
from keel_server.platform.webhook_targets import WebhookAllow, WebhookTargetRefused, resolve_target
from keel_worker.jobrunner.webhook import WebhookDeliveryError, deliver

PUBLIC = "93.184.216.34"
NOBODY = WebhookAllow.parse("")


def _payload() -> WebhookPayload:
    rollout = WebhookRollout(
        id="ro_1",
        step=1,
        group_index=0,
        sample_index=0,
        prompt="2+2",
        completion="4",
        token_count=1,
        deadline_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    return WebhookPayload(job_id="job_1", step=1, rollouts=[rollout])


def _public(host: str, port: int) -> list[str]:
    return [PUBLIC]


def _deliver(handler, *, url="http://rewards.test/hook", resolve=_public, attempts=5, waits=None):
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        return deliver(
            url,
            "secret-0123456789",
            _payload(),
            allow=NOBODY,
            timeout_s=1,
            max_attempts=attempts,
            backoff_s=0.5,
            client=client,
            sleep=(waits.append if waits is not None else lambda _: None),
            resolve=resolve,
        )


def test_deliver_retries_then_returns_inline_rewards_from_the_pinned_address() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert webhooks.verify("secret-0123456789", request.headers, request.content)
        if len(seen) < 3:
            return httpx.Response(503)
        return httpx.Response(200, json={"rewards": [{"rollout_id": "ro_1", "value": 1.0}]})

    waits: list[float] = []
    reply = _deliver(handler, waits=waits)
    assert [(r.rollout_id, r.value) for r in reply.rewards] == [("ro_1", 1.0)]
    assert waits == [0.5, 1.0]
    assert json.loads(seen[0].content)["rollouts"][0]["id"] == "ro_1"
    assert seen[0].headers[webhooks.JOB_HEADER] == "job_1"
    # The connection goes to the address that was checked; the host is named in Host.
    assert {(r.url.host, r.headers["host"]) for r in seen} == {(PUBLIC, "rewards.test")}


@pytest.mark.parametrize("status", [500, 501, 502, 505, 599, 408, 429])
def test_every_5xx_and_the_transient_4xx_are_retried(status) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status if len(calls) == 1 else 202)

    assert _deliver(handler).rewards == []
    assert len(calls) == 2


def test_a_permanent_4xx_fails_at_once_and_exhausted_retries_fail() -> None:
    calls = []

    def gone(request):
        calls.append(1)
        return httpx.Response(404)

    with pytest.raises(WebhookDeliveryError, match="HTTP 404"):
        _deliver(gone)
    assert len(calls) == 1
    with pytest.raises(WebhookDeliveryError, match="2 attempts"):
        _deliver(lambda r: httpx.Response(500), attempts=2)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused_unless_allowed(address) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(WebhookTargetRefused, match="KEEL_WEBHOOK_ALLOW"):
        resolve_target(f"http://{host}:8080/hook", NOBODY)
    with pytest.raises(WebhookTargetRefused):  # a name resolving there is refused the same
        resolve_target("http://innocent.test/hook", NOBODY, resolve=lambda h, p: [address])
    allowed = WebhookAllow.parse(f"{address}/32" if ":" not in address else address)
    target = resolve_target(f"http://{host}:8080/hook", allowed)
    assert ipaddress.ip_address(target.address) == ipaddress.ip_address(address)
    named = WebhookAllow.parse("Innocent.Test")
    assert resolve_target("http://innocent.test/h", named, resolve=lambda h, p: [address])


def test_a_public_address_and_odd_urls() -> None:
    assert resolve_target(f"https://{PUBLIC}/h", NOBODY).port == 443
    for bad in ["ftp://example.com/x", "http:///nohost", "file:///etc/passwd"]:
        with pytest.raises(WebhookTargetRefused):
            resolve_target(bad, NOBODY)
    with pytest.raises(WebhookTargetRefused, match="does not resolve"):
        resolve_target("http://no-such-host.invalid/h", NOBODY)


def test_dns_rebinding_between_attempts_is_refused_before_connecting() -> None:
    answers = iter([[PUBLIC], ["127.0.0.1"]])
    seen = []

    def handler(request):
        seen.append(request.url.host)
        return httpx.Response(503)

    with pytest.raises(WebhookDeliveryError, match="refused"):
        _deliver(handler, resolve=lambda h, p: next(answers))
    assert seen == [PUBLIC]  # the second attempt never connected
