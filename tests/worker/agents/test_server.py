"""The policy server over real HTTP: auth and bad bodies answered by the handlers, calls queued
for the owner and batched by `take`, each call answered exactly once (by the owner, the reply
timeout or `close`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from keel_worker.agents.server import SECRET_HEADER, Call, PolicyServer

SECRET = "s3cret-for-tests"
AUTH = {SECRET_HEADER: SECRET}


@pytest.fixture
def server() -> Iterator[PolicyServer]:
    with PolicyServer(
        "127.0.0.1", 0, SECRET, coalesce_s=0.2, max_coalesce_s=1.0, reply_timeout_s=10
    ) as s:
        yield s


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=16) as p:
        yield p


def post(url: str, path: str, body=None, headers=AUTH, **kwargs) -> httpx.Response:
    kwargs.setdefault("json", {} if body is None else body)
    return httpx.post(f"{url}{path}", headers=headers, timeout=10, **kwargs)


def wait_queued(server: PolicyServer, count: int) -> None:
    """Until `count` calls are queued (the handlers run on their own threads)."""
    deadline = time.monotonic() + 10
    while len(server._queue) < count:
        assert time.monotonic() < deadline, f"{len(server._queue)} of {count} calls queued"
        time.sleep(0.005)


def test_url_has_the_bound_port_and_health_answers(server: PolicyServer) -> None:
    assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0")
    response = httpx.get(f"{server.url}/health")
    assert (response.status_code, response.json()) == (200, {"ok": True})


def test_a_call_reaches_the_owner_and_the_owner_s_answer_reaches_the_client(
    server: PolicyServer, pool: ThreadPoolExecutor
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    pending = pool.submit(post, server.url, "/episodes/ep_1/chat/completions", body)
    (call,) = server.take(timeout_s=10, max_calls=8)
    assert (call.kind, call.episode_id, call.body) == ("chat/completions", "ep_1", body)
    assert call.answer(201, {"id": "x", "choices": []}) is True
    response = pending.result(timeout=10)
    assert (response.status_code, response.json()) == (201, {"id": "x", "choices": []})
    assert response.headers["content-type"] == "application/json"


def test_completions_is_the_other_kind(server: PolicyServer, pool: ThreadPoolExecutor) -> None:
    pending = pool.submit(post, server.url, "/episodes/ep_2/completions", {"prompt": "a"})
    (call,) = server.take(timeout_s=10, max_calls=8)
    assert (call.kind, call.episode_id) == ("completions", "ep_2")
    call.answer(200, {"ok": 1})
    assert pending.result(timeout=10).json() == {"ok": 1}


def test_concurrent_calls_arrive_in_one_take(
    server: PolicyServer, pool: ThreadPoolExecutor
) -> None:
    # take() is already waiting when the first call lands; the rest join it within coalesce_s.
    taken: Future[list[Call]] = pool.submit(server.take, 10, 64)
    start = threading.Barrier(8)

    def one(i: int) -> httpx.Response:
        start.wait()
        return post(server.url, f"/episodes/ep_{i}/chat/completions", {"i": i})

    responses = [pool.submit(one, i) for i in range(8)]
    calls = taken.result(timeout=10)
    assert sorted(c.body["i"] for c in calls) == list(range(8))
    for call in calls:
        call.answer(200, {"echo": call.body["i"], "episode": call.episode_id})
    for i, pending in enumerate(responses):
        assert pending.result(timeout=10).json() == {"echo": i, "episode": f"ep_{i}"}


def test_the_gather_slides_with_each_arrival(pool: ThreadPoolExecutor) -> None:
    # Arrivals 0.3 s apart: each within coalesce_s of the last, the third past coalesce_s of the
    # first, so a window fixed at the first arrival would have cut the batch after two.
    with PolicyServer("127.0.0.1", 0, SECRET, coalesce_s=0.5, max_coalesce_s=10) as server:
        taken: Future[list[Call]] = pool.submit(server.take, 10, 64)
        for i in range(3):
            pool.submit(post, server.url, "/episodes/e/completions", {"i": i})
            wait_queued(server, i + 1)
            if i < 2:
                time.sleep(0.3)
        calls = taken.result(timeout=10)
        assert [c.body["i"] for c in calls] == [0, 1, 2]
        for call in calls:
            call.answer(200, {})


def test_the_gather_ends_max_coalesce_s_after_the_oldest_call(pool: ThreadPoolExecutor) -> None:
    with PolicyServer("127.0.0.1", 0, SECRET, coalesce_s=30, max_coalesce_s=0.2) as server:
        pool.submit(post, server.url, "/episodes/e/completions")
        wait_queued(server, 1)
        started = time.monotonic()
        (call,) = server.take(timeout_s=10, max_calls=64)
        assert time.monotonic() - started < 5  # not the 30 s of coalesce_s
        call.answer(200, {})


def test_max_calls_queued_are_taken_without_waiting_out_the_window(
    pool: ThreadPoolExecutor,
) -> None:
    with PolicyServer("127.0.0.1", 0, SECRET, coalesce_s=30, max_coalesce_s=30) as server:
        for i in range(3):
            pool.submit(post, server.url, "/episodes/e/completions", {"i": i})
        wait_queued(server, 3)
        started = time.monotonic()
        calls = server.take(timeout_s=10, max_calls=3)
        assert len(calls) == 3 and time.monotonic() - started < 5
        for call in calls:
            call.answer(200, {})


def test_take_returns_what_is_queued_oldest_first_up_to_max_calls(
    server: PolicyServer, pool: ThreadPoolExecutor
) -> None:
    responses = []
    for i in range(5):  # one at a time, so the queue's order is known
        responses.append(pool.submit(post, server.url, "/episodes/e/completions", {"i": i}))
        wait_queued(server, i + 1)
    batches = [server.take(timeout_s=1, max_calls=2) for _ in range(3)]
    assert [[c.body["i"] for c in b] for b in batches] == [[0, 1], [2, 3], [4]]
    for call in (c for b in batches for c in b):
        call.answer(200, {"i": call.body["i"]})
    assert [r.result(timeout=10).json()["i"] for r in responses] == list(range(5))


def test_take_with_nothing_queued_returns_empty_after_its_timeout(server: PolicyServer) -> None:
    started = time.monotonic()
    assert server.take(timeout_s=0.2, max_calls=4) == []
    assert 0.2 <= time.monotonic() - started < 2


@pytest.mark.parametrize(
    "headers", [{}, {SECRET_HEADER: "wrong"}, {SECRET_HEADER: SECRET + "x"}], ids=str
)
def test_a_missing_or_wrong_secret_is_401_and_queues_nothing(
    server: PolicyServer, headers: dict[str, str]
) -> None:
    response = post(server.url, "/episodes/e/chat/completions", {"a": 1}, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized" and SECRET not in response.text
    assert server.take(timeout_s=0.05, max_calls=4) == []


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'"text"', 400, "bad_request"),
        (b"\xff\xfe", 400, "bad_request"),
        (b'{"x": "' + b"a" * 2000 + b'"}', 413, "payload_too_large"),
    ],
)
def test_a_body_that_is_no_json_object_is_refused_before_the_queue(
    content: bytes, status: int, code: str
) -> None:
    with PolicyServer("127.0.0.1", 0, SECRET, max_body_bytes=1000) as server:
        response = httpx.post(
            f"{server.url}/episodes/e/chat/completions", headers=AUTH, content=content
        )
        assert response.status_code == status and response.json()["code"] == code
        assert server.take(timeout_s=0.05, max_calls=4) == []


@pytest.mark.parametrize(
    "path", ["/episodes/e/embeddings", "/episodes//completions", "/v1/chat/completions"]
)
def test_unknown_routes_are_404(server: PolicyServer, path: str) -> None:
    response = post(server.url, path)
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert httpx.get(f"{server.url}/nothing").status_code == 404


def test_an_unanswered_call_times_out_504_and_a_late_answer_is_refused(
    pool: ThreadPoolExecutor,
) -> None:
    with PolicyServer("127.0.0.1", 0, SECRET, reply_timeout_s=0.3) as server:
        pending = pool.submit(post, server.url, "/episodes/e/completions")
        (call,) = server.take(timeout_s=10, max_calls=4)
        response = pending.result(timeout=10)
        assert response.status_code == 504 and response.json()["code"] == "policy_timeout"
        assert call.answer(200, {"late": True}) is False

        # A call that timed out while still queued is never handed to the owner.
        pending = pool.submit(post, server.url, "/episodes/e/completions")
        assert pending.result(timeout=10).status_code == 504
        assert server.take(timeout_s=0.05, max_calls=4) == []


def test_a_second_answer_is_refused_and_the_first_is_what_the_client_gets(
    server: PolicyServer, pool: ThreadPoolExecutor
) -> None:
    pending = pool.submit(post, server.url, "/episodes/e/completions")
    (call,) = server.take(timeout_s=10, max_calls=4)
    assert call.answer(200, {"first": True}) is True
    assert call.answer(500, {"second": True}) is False
    assert pending.result(timeout=10).json() == {"first": True}
    with pytest.raises(ValueError):
        call.answer(42, {})


def test_close_answers_queued_and_taken_calls_503_and_refuses_later_answers(
    pool: ThreadPoolExecutor,
) -> None:
    server = PolicyServer("127.0.0.1", 0, SECRET, coalesce_s=0)
    taken = pool.submit(post, server.url, "/episodes/taken/completions")
    (call,) = server.take(timeout_s=10, max_calls=1)
    queued = [pool.submit(post, server.url, f"/episodes/q{i}/completions") for i in range(3)]
    wait_queued(server, 3)

    server.close()
    for pending in (taken, *queued):
        response = pending.result(timeout=10)
        assert response.status_code == 503 and response.json()["code"] == "policy_unavailable"
    assert call.answer(200, {}) is False
    assert server.take(timeout_s=1, max_calls=4) == []  # closed: returns at once
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")
    server.close()  # idempotent


def test_close_wakes_an_owner_waiting_in_take(pool: ThreadPoolExecutor) -> None:
    server = PolicyServer("127.0.0.1", 0, SECRET)
    waiting = pool.submit(server.take, 30, 4)
    time.sleep(0.05)
    server.close()
    assert waiting.result(timeout=5) == []


def test_an_unserializable_answer_is_a_500_envelope(
    server: PolicyServer, pool: ThreadPoolExecutor
) -> None:
    pending = pool.submit(post, server.url, "/episodes/e/completions")
    (call,) = server.take(timeout_s=10, max_calls=4)
    call.answer(200, {"logprob": float("nan")})
    response = pending.result(timeout=10)
    assert response.status_code == 500 and response.json()["code"] == "internal_error"


def test_a_kept_alive_connection_serves_calls_one_after_another(server: PolicyServer) -> None:
    def owner() -> None:
        for _ in range(3):
            for call in server.take(timeout_s=10, max_calls=4):
                call.answer(200, {"n": call.body["n"]})

    thread = threading.Thread(target=owner)
    thread.start()
    with httpx.Client(headers=AUTH, timeout=10) as client:
        answers = [
            client.post(f"{server.url}/episodes/e/completions", json={"n": n}).json()["n"]
            for n in range(3)
        ]
    thread.join(timeout=10)
    assert answers == [0, 1, 2]
