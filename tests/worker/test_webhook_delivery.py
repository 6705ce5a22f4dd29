"""Webhook delivery (worker side): retries, the SSRF policy of keel_server.platform.webhook_targets
checked before every attempt, connections pinned to the checked address, and the bounds on a
delivery (backoff ceiling, the reward deadline, pause/cancel between attempts, each exchange's
whole duration, the reply's size)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from keel import webhooks
from keel.types.rewards import WebhookPayload, WebhookRollout
from keel_server.platform.webhook_targets import WebhookAllow, WebhookTargetRefused, resolve_target
from keel_worker.jobrunner.webhook import DeliveryLimits, WebhookDeliveryError, deliver

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


LIMITS = DeliveryLimits(
    attempt_timeout_s=5.0,
    max_attempts=3,
    backoff_s=0.5,
    backoff_max_s=60.0,
    max_reply_bytes=1 << 20,
    total_s=60.0,
)


def _deliver(handler, *, url="http://rewards.test/hook", resolve=_public, attempts=5, waits=None):
    def wait(seconds: float) -> bool:
        if waits is not None:
            waits.append(seconds)
        return False

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        return deliver(
            url,
            "secret-0123456789",
            _payload(),
            allow=NOBODY,
            limits=dataclasses.replace(LIMITS, max_attempts=attempts),
            wait=wait,
            client=client,
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
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:c0a8:101::",  # 6to4 of 192.168.1.1
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
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
    # The NAT64 and 6to4 forms of a public IPv4 address are as public as it is.
    for public_v6 in ("64:ff9b::808:808", "2002:808:808::1"):
        assert resolve_target(f"http://[{public_v6}]/h", NOBODY).address == public_v6
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


# ---- the bounds of a delivery, against a real local receiver

LOCAL = WebhookAllow.parse("127.0.0.1")


class Receiver:
    """A local HTTP endpoint whose every answer is `answer(handler)` (raw writes on the socket,
    so it can trickle); counts the deliveries it got."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.posts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts += 1
                with contextlib.suppress(OSError):
                    receiver.answer(self)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        serve = functools.partial(self.server.serve_forever, poll_interval=0.05)
        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def receiver(answer):
    r = Receiver(answer)
    try:
        yield r
    finally:
        r.close()


def _status(code: int, body: bytes = b""):
    def answer(handler) -> None:
        handler.send_response(code)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def _trickle(part: str):
    """One byte every 0.2 s for 30 s, in the headers or in the body."""

    def answer(handler) -> None:
        out = handler.wfile
        out.write(b"HTTP/1.1 200 OK\r\n")
        if part == "body":
            out.write(b"Content-Length: 150\r\n\r\n")
        else:
            out.write(b"X-Slow: ")
        out.flush()
        for _ in range(150):
            time.sleep(0.2)
            out.write(b"a")
            out.flush()

    return answer


def _limits(**overrides) -> DeliveryLimits:
    return dataclasses.replace(LIMITS, **{"backoff_s": 0.01, "backoff_max_s": 0.01, **overrides})


def _local(url: str, limits: DeliveryLimits, **kwargs):
    return deliver(url, "secret-0123456789", _payload(), allow=LOCAL, limits=limits, **kwargs)


def test_backoff_doubles_up_to_its_ceiling() -> None:
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    with receiver(_status(503)) as r, pytest.raises(WebhookDeliveryError, match="7 attempts"):
        _local(r.url, _limits(max_attempts=7, backoff_s=1.0, backoff_max_s=5.0), wait=wait)
    assert r.posts == 7
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]  # doubled, then the ceiling


def test_the_reward_deadline_bounds_the_whole_delivery() -> None:
    limits = _limits(max_attempts=20, backoff_s=0.2, backoff_max_s=1e6, total_s=1.5)
    started = time.monotonic()
    with receiver(_status(503)) as r, pytest.raises(WebhookDeliveryError, match="deadline"):
        _local(r.url, limits)
    # Without the bound the 20 attempts would back off for 0.2 × (2**19 - 1) s ≈ 29 hours.
    assert time.monotonic() - started < 3.0
    assert 2 <= r.posts < 10


def test_a_pause_or_cancel_ends_the_delivery_between_attempts() -> None:
    def wait(seconds: float) -> bool:  # the job is cancelled during the first backoff
        return True

    with receiver(_status(503)) as r, pytest.raises(WebhookDeliveryError, match="stopped"):
        _local(r.url, _limits(max_attempts=20), wait=wait)
    assert r.posts == 1


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickling_receiver_cannot_hold_an_attempt_past_its_timeout(part) -> None:
    started = time.monotonic()
    with (
        receiver(_trickle(part)) as r,
        pytest.raises(WebhookDeliveryError, match=r"no complete reply within 1 s"),
    ):
        _local(r.url, _limits(attempt_timeout_s=1.0, max_attempts=1))
    # httpx's own timeouts bound each read, and each byte arrives within 0.2 s: 30 s without
    # the bound on the whole exchange.
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("declared", [True, False])
def test_a_reply_over_the_size_bound_fails_the_delivery_at_once(declared) -> None:
    big = b"x" * 5000

    def answer(handler) -> None:
        handler.send_response(200)
        if declared:
            handler.send_header("Content-Length", str(len(big)))
        handler.end_headers()
        handler.wfile.write(big)  # undeclared: the body ends when the connection closes
        handler.close_connection = True

    with receiver(answer) as r, pytest.raises(WebhookDeliveryError, match="over 4096 bytes"):
        _local(r.url, _limits(max_reply_bytes=4096))
    assert r.posts == 1  # the receiver would answer the same again: not retried


@pytest.mark.parametrize("body", [b"OK", b"<html>thanks</html>", b"[]", b"   "])
def test_any_2xx_counts_as_delivered_and_a_body_that_is_not_the_json_reply_holds_no_rewards(
    body,
) -> None:
    with receiver(_status(200, body)) as r:
        assert _local(r.url, _limits()).rewards == []
    with receiver(_status(202, b'{"rewards": [{"rollout_id": "ro_1", "value": 0.5}]}')) as r:
        assert [(i.rollout_id, i.value) for i in _local(r.url, _limits()).rewards] == [
            ("ro_1", 0.5)
        ]
