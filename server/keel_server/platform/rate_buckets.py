"""Token buckets by key, where they are kept: in this process, or in Redis for every process.

A bucket holds at most `burst` tokens and refills at `rate_per_s`; `take` spends one token or
says how long until one is free. `LocalBuckets` live in one process's memory (the embedded
deployment, which has no Redis). `RedisBuckets` keep each bucket in one Redis hash and update it
in one Lua script, which Redis runs atomically, on Redis's own clock: two API processes cannot
both spend the last token, and their clocks need not agree (Redis 5 or newer: the script writes
after reading the clock). What to do when Redis does not
answer is the caller's decision (`keel_server.services.quotas`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from keel_server.platform.settings import Settings

KEY_PREFIX = "keel:rate:"
# Seconds: Redis is on the request path of every authenticated call, so a Redis that stopped
# answering must cost a request a fraction of a second, not the client library's default wait.
REDIS_TIMEOUT_S = 0.25

# KEYS[1] the bucket; ARGV rate_per_s, burst. Returns {1 if a token was spent, tokens left as a
# string} (a Lua number returned as is would be truncated to an integer).
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1]) or burst
local at = tonumber(saved[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local spent = 0
if tokens >= 1 then
  tokens = tokens - 1
  spent = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
-- A bucket left alone refills to full in burst / rate seconds; after that it equals a new one.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {spent, tostring(tokens)}
"""


@dataclass(frozen=True)
class Take:
    spent: bool
    wait_s: float  # until a token is free; 0 when one was spent


def _take(tokens: float, rate_per_s: float) -> Take:
    """The verdict on a bucket holding `tokens` after the take (a spent token already gone)."""
    return Take(False, (1.0 - tokens) / rate_per_s) if tokens < 1.0 else Take(True, 0.0)


class LocalBuckets:
    """The buckets of this process only."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> Take:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            verdict = _take(tokens, self.rate_per_s)
            self._buckets[key] = (tokens - 1.0 if verdict.spent else tokens, now)
        return verdict


class StoreUnreachable(Exception):
    """The shared store (Redis) did not answer."""


class RedisBuckets:
    """The buckets every API process on one Redis shares. `take` raises `StoreUnreachable` when
    Redis does not answer."""

    def __init__(self, url: str, rate_per_s: float, burst: int) -> None:
        self.url, self.rate_per_s, self.burst = url, rate_per_s, burst
        self._client = None
        self._script = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def take(self, key: str) -> Take:
        from redis.exceptions import RedisError

        script = self._script_for_this_loop()
        try:
            spent, tokens = await script(
                keys=[KEY_PREFIX + key], args=[self.rate_per_s, self.burst]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnreachable(f"{type(exc).__name__}: {exc}") from exc
        return Take(True, 0.0) if int(spent) else _take(float(tokens), self.rate_per_s)

    def _script_for_this_loop(self):
        # An asyncio Redis connection belongs to the event loop that opened it. A server runs one
        # loop for its life; a test client may run one per request, so a new loop gets a new
        # client (the old one's connections went with their loop).
        loop = asyncio.get_running_loop()
        if self._script is None or self._loop is not loop:
            import redis.asyncio

            self._client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
            )
            self._script = self._client.register_script(TAKE_SCRIPT)
            self._loop = loop
        return self._script

    async def aclose(self) -> None:
        client, self._client, self._script, self._loop = self._client, None, None, None
        if client is not None:
            await client.aclose()


def shared_store_url(settings: Settings) -> str | None:
    """The Redis the request-rate buckets are shared through: the broker's, when the broker is
    Redis (the production deployment); None (each process keeps its own) otherwise."""
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return None
