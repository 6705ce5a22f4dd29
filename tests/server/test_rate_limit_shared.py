"""The per-project request rate shared through Redis (`keel_server.services.quotas.RateLimiter`
over `keel_server.platform.rate_buckets`): atomic across clients, refilled on Redis's clock, and
per process again while Redis does not answer. The test across two real API processes is
`tests/e2e/test_shared_rate_limit.py`."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from keel_server.api.app import create_app
from keel_server.platform.rate_buckets import KEY_PREFIX, RedisBuckets
from keel_server.services import quotas
from keel_server.services.context import Principal
from keel_server.services.errors import ServiceError
from keel_server.services.quotas import RateLimiter

REDIS_URL = os.environ.get("KEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _project() -> str:
    return f"proj_test_{secrets.token_hex(6)}"


def test_clients_racing_for_the_last_tokens_spend_each_once() -> None:
    """Eight clients, each with its own connection (as eight API processes have), race for a
    bucket of 40 tokens that does not refill meanwhile: exactly 40 takes succeed."""
    project, burst, clients, tries = _project(), 40, 8, 15
    spent: list[int] = []

    def client() -> None:
        buckets = RedisBuckets(REDIS_URL, 1e-3, burst)

        async def run() -> int:
            try:
                return sum([(await buckets.take(project)).spent for _ in range(tries)])
            finally:
                await buckets.aclose()

        spent.append(asyncio.run(run()))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(spent) == clients
    assert sum(spent) == burst  # clients * tries = 120 asked for them


def test_a_bucket_refills_at_the_rate_and_says_how_long_to_wait() -> None:
    buckets, project = RedisBuckets(REDIS_URL, 20.0, 2), _project()

    async def run() -> None:
        try:
            assert [(await buckets.take(project)).spent for _ in range(2)] == [True, True]
            refused = await buckets.take(project)
            assert not refused.spent and 0 < refused.wait_s <= 1 / 20
            await asyncio.sleep(refused.wait_s + 0.02)
            assert (await buckets.take(project)).spent
        finally:
            await buckets.aclose()

    asyncio.run(run())


def test_a_left_bucket_expires_from_redis() -> None:
    import redis

    buckets, project = RedisBuckets(REDIS_URL, 10.0, 5), _project()

    async def run() -> None:
        try:
            await buckets.take(project)
        finally:
            await buckets.aclose()

    asyncio.run(run())
    with redis.Redis.from_url(REDIS_URL) as r:
        ttl_ms = r.pttl(KEY_PREFIX + project)
    # Full again after burst / rate = 0.5 s; kept a second beyond, never forever.
    assert 0 < ttl_ms <= 1500


def test_two_limiters_on_one_redis_share_a_project_rate() -> None:
    """Two API processes' limiters: the burst is the project's, not each process's."""
    principal = Principal(_project())
    first, second = (RateLimiter(1e-3, 4, shared_url=REDIS_URL) for _ in range(2))

    async def run() -> list[bool]:
        answered = []
        for limiter in (first, second) * 4:
            try:
                await limiter.check(principal)
                answered.append(True)
            except ServiceError as exc:
                assert exc.status == 429 and exc.code == "rate_limited"
                answered.append(False)
        await first.aclose()
        await second.aclose()
        return answered

    assert asyncio.run(run()) == [True] * 4 + [False] * 4


def test_without_redis_each_process_keeps_its_own_buckets_and_serves(caplog, monkeypatch) -> None:
    """A Redis that does not answer refuses no request for that: the process falls back to its
    own buckets (the rate still holds, per process), and within the retry interval it does not
    ask Redis again (one failed attempt, one warning)."""
    monkeypatch.setattr(quotas, "time", SimpleNamespace(monotonic=lambda: 100.0))
    limiter, principal = RateLimiter(1e-3, 3, shared_url=UNREACHABLE), Principal(_project())

    async def run() -> list[bool]:
        answered = []
        for _ in range(5):
            try:
                await limiter.check(principal)
                answered.append(True)
            except ServiceError:
                answered.append(False)
        await limiter.aclose()
        return answered

    assert asyncio.run(run()) == [True, True, True, False, False]
    warnings = [r for r in caplog.records if "Redis did not answer" in r.getMessage()]
    assert len(warnings) == 1


def test_once_redis_answers_again_the_limiter_goes_back_to_it(monkeypatch) -> None:
    now = [100.0]  # the limiter's clock, moved by hand: a loaded machine cannot skew the test
    monkeypatch.setattr(quotas, "time", SimpleNamespace(monotonic=lambda: now[0]))
    principal = Principal(_project())
    limiter = RateLimiter(1e-3, 2, shared_url=UNREACHABLE)
    witness = RedisBuckets(REDIS_URL, 1e-3, 2)  # another process's view of the shared bucket

    async def run() -> None:
        await limiter.check(principal)  # Redis down: this process's own bucket
        await limiter.shared.aclose()
        limiter.shared.url = REDIS_URL  # Redis is back
        now[0] += quotas.REDIS_RETRY_S / 2
        await limiter.check(principal)  # still within the retry interval: its own bucket
        assert (await witness.take(principal.project_id)).spent  # the shared one is untouched
        now[0] += quotas.REDIS_RETRY_S
        await limiter.check(principal)  # past it: the shared bucket, its second token
        assert not (await witness.take(principal.project_id)).spent
        await limiter.aclose()
        await witness.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("broker_url", "shared"), [("filesystem://", False), (REDIS_URL, True), (UNREACHABLE, True)]
)
def test_the_app_shares_its_buckets_where_the_broker_is_redis(settings, broker_url, shared) -> None:
    app = create_app(settings.model_copy(update={"broker_url": broker_url}))
    limiter = app.state.rate_limiter
    assert (limiter.shared is not None) is shared
    if shared:
        assert limiter.shared.url == broker_url


def test_the_api_limits_a_project_through_redis(settings) -> None:
    """Two apps (as two API processes) on one Redis: a project's burst is spent across both."""
    limited = settings.model_copy(
        update={"broker_url": REDIS_URL, "rate_limit_per_s": 0.01, "rate_limit_burst": 3}
    )
    admin = {"Authorization": f"Bearer {settings.admin_key}"}
    with TestClient(create_app(limited)) as one, TestClient(create_app(limited)) as two:
        key = one.post("/v1/keys", json={"project": "alpha"}, headers=admin).json()["key"]
        headers = {"Authorization": f"Bearer {key}"}
        codes = [c.get("/v1/jobs", headers=headers).status_code for c in (one, two, one, two)]
        assert codes == [200, 200, 200, 429]
        refused = two.get("/v1/jobs", headers=headers)
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 90  # 1 token at 0.01/s
