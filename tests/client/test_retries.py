"""Retries, backoff and idempotency keys of the SDK transport, against a stand-in server (a
plain Starlette app that fails on purpose; nothing of keel's is replaced)."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import keel
from keel._transport import ClientConfig, backoff_s, retry_after_s


def flaky_server(statuses: list[int], headers: dict[str, str] | None = None):
    """Answers each request with the next status of `statuses` (then 200), recording the
    Idempotency-Key it saw."""
    seen: list[str | None] = []

    async def endpoint(request: Request) -> JSONResponse:
        seen.append(request.headers.get("idempotency-key"))
        status = statuses[len(seen) - 1] if len(seen) <= len(statuses) else 200
        if status == 200:
            return JSONResponse({"status": "ok", "checks": {}})
        body = {"code": "unavailable", "detail": f"try again ({status})"}
        return JSONResponse(body, status_code=status, headers=headers or {})

    app = Starlette(routes=[Route("/health/live", endpoint, methods=["GET", "POST"])])
    return TestClient(app, base_url="http://flaky"), seen


def _client(http, **kw) -> keel.Client:
    return keel.Client(base_url="http://flaky", api_key="k", http_client=http,
                       backoff_base_s=0.0, **kw)  # fmt: skip


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status):
    http, seen = flaky_server([status, status])
    assert _client(http, max_retries=2).health.live().status == "ok"
    assert len(seen) == 3


def test_retries_give_up_with_the_typed_error():
    http, seen = flaky_server([503, 503, 503])
    with pytest.raises(keel.InternalServerError) as exc:
        _client(http, max_retries=2).health.live()
    assert exc.value.status_code == 503 and exc.value.detail == "try again (503)"
    assert len(seen) == 3


def test_a_plain_conflict_is_not_retried_but_a_marked_one_is():
    http, seen = flaky_server([409])
    with pytest.raises(keel.ConflictError):
        _client(http, max_retries=3).health.live()
    assert len(seen) == 1
    http, seen = flaky_server([409], headers={"Retry-After": "0"})
    assert _client(http, max_retries=3).health.live().status == "ok"
    assert len(seen) == 2


def test_post_keeps_one_idempotency_key_across_its_retries():
    http, seen = flaky_server([503, 500])
    client = _client(http, max_retries=3)
    client._transport.request("POST", "/health/live", json={})
    client._transport.request("POST", "/health/live", json={})
    assert len(seen) == 4
    assert seen[0] == seen[1] == seen[2] and seen[0].startswith("keel-")
    assert seen[3] != seen[0]


def test_retry_after_is_honored():
    http, seen = flaky_server([429], headers={"Retry-After": "0.3"})
    start = time.monotonic()
    _client(http, max_retries=1).health.live()
    assert time.monotonic() - start >= 0.3 and len(seen) == 2


def test_retry_after_parsing_and_backoff_growth():
    def response(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    assert retry_after_s(response("2")) == 2.0
    assert retry_after_s(response("3600")) == 60.0  # capped
    future = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= retry_after_s(response(future)) <= 5.0
    assert retry_after_s(response("soon")) is None
    config = ClientConfig("http://x", None, 1.0, 5, backoff_base_s=0.5, backoff_max_s=8.0)
    # Full jitter in [window/2, window], window = min(0.5·2^attempt, 8).
    for attempt, window in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 8.0)]:
        waits = [backoff_s(config, attempt, None) for _ in range(50)]
        assert all(window / 2 <= w <= window for w in waits)


def test_connection_errors_are_retried_then_raised():
    calls: list[int] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"status": "ok", "checks": {}})

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    assert _client(http, max_retries=2).health.live().status == "ok"
    calls.clear()
    with pytest.raises(keel.APIConnectionError):
        _client(http, max_retries=1).health.live()
    assert len(calls) == 2
