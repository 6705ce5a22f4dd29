"""Retries, backoff and idempotency keys of the SDK transport, against a stand-in server (a
plain Starlette app that fails on purpose; nothing of keel's is replaced)."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
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
    return keel.Client(
        base_url="http://flaky", api_key="k", http_client=http, backoff_base_s=0.0, **kw
    )


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
        _client(http, max_retries=1, reconnect_window_s=0).health.live()
    assert len(calls) == 2


def _restarting(down_s: float):
    """A server that refuses connections for `down_s` from its first request (an API restart),
    then answers; records each attempt's time."""
    attempts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(time.monotonic())
        if attempts[-1] - attempts[0] < down_s:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(
            200,
            json={
                "rollout_id": "rol_x",
                "status": "rewarded",
                "reward": 1.0,
                "rewarded_at": "2026-12-01T12:00:00Z",
                "created": True,
            },
        )

    return handler, attempts


def test_a_reward_posted_during_a_restart_is_retried_until_the_server_is_back():
    # Two retries' worth of backoff is a fraction of the outage: past `max_retries`, a refused
    # connection is retried within `reconnect_window_s`, with the same Idempotency-Key.
    handler, attempts = _restarting(down_s=1.0)
    keys: list[str] = []

    def recording(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        return handler(request)

    http = httpx.Client(transport=httpx.MockTransport(recording))
    client = keel.Client(
        base_url="http://flaky", api_key="k", http_client=http, max_retries=2, backoff_base_s=0.05
    )
    assert client.rewards.create("rol_x", 1.0).status == "rewarded"
    assert attempts[-1] - attempts[0] >= 1.0 and len(attempts) > 3
    assert len(set(keys)) == 1

    # A window shorter than the outage gives up with the typed error; max_retries=0 never
    # retries, window or not.
    for retries, window, tries in ((2, 0.3, None), (0, 30.0, 1)):
        handler, attempts = _restarting(down_s=5.0)
        http = httpx.Client(transport=httpx.MockTransport(handler))
        client = keel.Client(
            base_url="http://flaky",
            api_key="k",
            http_client=http,
            max_retries=retries,
            backoff_base_s=0.05,
            reconnect_window_s=window,
        )
        with pytest.raises(keel.APIConnectionError):
            client.rewards.create("rol_x", 1.0)
        assert attempts[-1] - attempts[0] < window
        if tries is not None:
            assert len(attempts) == tries


# ---- async twins of the retry loop ------------------------------------------------------------


def run_async(test):
    """Run an async test body with asyncio.run (no async pytest plugin needed)."""

    @functools.wraps(test)
    def wrapper() -> None:
        asyncio.run(test())

    return wrapper


def _async_client(handler, **kw) -> keel.AsyncClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://flaky")
    return keel.AsyncClient(
        base_url="http://flaky", api_key="k", http_client=http, backoff_base_s=0.0, **kw
    )


def _scripted(outcomes: list):
    """A handler answering request i with outcomes[i]: a status code (503: error envelope,
    200: healthy) or an exception class to raise; records each request's Idempotency-Key."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("idempotency-key"))
        outcome = outcomes[min(len(seen), len(outcomes)) - 1]
        if isinstance(outcome, type):
            raise outcome("scripted failure", request=request)
        if outcome == 200:
            return httpx.Response(200, json={"status": "ok", "checks": {}})
        return httpx.Response(outcome, json={"code": "unavailable", "detail": f"({outcome})"})

    return handler, seen


@run_async
async def test_async_transient_statuses_and_connection_errors_are_retried():
    handler, seen = _scripted([503, httpx.ConnectError, 429, 200])
    assert (await _async_client(handler, max_retries=3).health.live()).status == "ok"
    assert len(seen) == 4


@run_async
async def test_async_retries_give_up_with_the_typed_errors():
    handler, seen = _scripted([503])
    with pytest.raises(keel.InternalServerError):
        await _async_client(handler, max_retries=2).health.live()
    assert len(seen) == 3
    handler, seen = _scripted([httpx.ReadTimeout])
    with pytest.raises(keel.APITimeoutError):
        await _async_client(handler, max_retries=1).health.live()
    assert len(seen) == 2


@run_async
async def test_async_post_keeps_one_idempotency_key_across_its_retries():
    handler, seen = _scripted([502, 502, 200])
    client = _async_client(handler, max_retries=2)
    await client._transport.request("POST", "/health/live", json={})
    assert len(seen) == 3 and seen[0] and len(set(seen)) == 1


# ---- event streams that drop ------------------------------------------------------------------


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """An SSE body: `chunks`, then a dropped connection (ReadError) when `drops`."""

    def __init__(self, chunks: list[bytes], *, drops: bool) -> None:
        self.chunks, self.drops = chunks, drops

    def __iter__(self):
        yield from self.chunks
        if self.drops:
            raise httpx.ReadError("connection reset mid-stream")

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk
        if self.drops:
            raise httpx.ReadError("connection reset mid-stream")


def _event(i: int) -> bytes:
    data = {
        "id": i,
        "job_id": "job_x",
        "type": "metrics",
        "data": {"step": i},
        "created_at": "2026-12-01T12:00:00Z",
    }
    return f"id: {i}\nevent: metrics\ndata: {json.dumps(data)}\n\n".encode()


def _flaky_stream(events_per_connection: int, total: int):
    """Each connection sends the next events after Last-Event-ID, then drops; the last one ends
    cleanly. Records the Last-Event-ID of every connection."""
    resumed_from: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        resumed_from.append(last)
        start = int(last or 0) + 1
        ids = list(range(start, min(start + events_per_connection, total + 1)))
        body = _Body([_event(i) for i in ids], drops=not ids or ids[-1] < total)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    return handler, resumed_from


def test_a_healthy_stream_that_drops_now_and_then_never_gives_up():
    # One event per connection, then a drop: 5 drops in all with max_retries=1. Only drops in a
    # row count, so the stream reaches its end.
    handler, resumed_from = _flaky_stream(1, total=5)
    client = _client(httpx.Client(transport=httpx.MockTransport(handler)), max_retries=1)
    events = list(client.jobs.events("job_x"))
    assert [e.id for e in events] == [1, 2, 3, 4, 5]
    assert resumed_from == [None, "1", "2", "3", "4"]
    # The event is the server's, id and time included (nothing invented by the SDK).
    assert events[0].created_at.isoformat() == "2026-12-01T12:00:00+00:00"
    assert events[0].data == {"step": 1}


def test_a_stream_that_keeps_dropping_raises_the_typed_connection_error():
    handler, resumed_from = _flaky_stream(0, total=5)  # every connection drops at once
    client = _client(httpx.Client(transport=httpx.MockTransport(handler)), max_retries=2)
    with pytest.raises(keel.APIConnectionError) as raised:
        list(client.jobs.events("job_x"))
    assert isinstance(raised.value.__cause__, httpx.ReadError)
    assert len(resumed_from) == 3


@run_async
async def test_async_event_streams_reconnect_and_give_up_like_the_sync_ones():
    handler, _ = _flaky_stream(1, total=4)
    events = [e.id async for e in _async_client(handler, max_retries=1).jobs.events("job_x")]
    assert events == [1, 2, 3, 4]
    handler, resumed_from = _flaky_stream(0, total=4)
    with pytest.raises(keel.APIConnectionError):
        [e async for e in _async_client(handler, max_retries=1).jobs.events("job_x")]
    assert len(resumed_from) == 2


def _aging_stream(events_per_connection: int, total: int):
    """Each connection sends the next events after Last-Event-ID, then the server's `reconnect`
    event and a clean end (its age cap); the last one ends after the final event."""
    resumed_from: list[str | None] = []
    reconnect = b'event: reconnect\ndata: {"reason": "max_age"}\n\n'

    def handler(request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        resumed_from.append(last)
        start = int(last or 0) + 1
        ids = list(range(start, min(start + events_per_connection, total + 1)))
        chunks = [_event(i) for i in ids] + ([reconnect] if ids[-1] < total else [])
        body = _Body(chunks, drops=False)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    return handler, resumed_from


def test_a_stream_the_server_ends_with_reconnect_resumes_from_the_last_event():
    # Five clean ends with `reconnect` and max_retries=0: they are not drops, nothing gives up.
    handler, resumed_from = _aging_stream(2, total=11)
    client = _client(httpx.Client(transport=httpx.MockTransport(handler)), max_retries=0)
    assert [e.id for e in client.jobs.events("job_x")] == list(range(1, 12))
    assert resumed_from == [None, "2", "4", "6", "8", "10"]


@run_async
async def test_async_event_streams_follow_reconnect_too():
    handler, resumed_from = _aging_stream(3, total=7)
    events = [e.id async for e in _async_client(handler, max_retries=0).jobs.events("job_x")]
    assert events == list(range(1, 8))
    assert resumed_from == [None, "3", "6"]
