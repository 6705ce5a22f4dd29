"""`Client` and `AsyncClient`: one attribute per REST resource, same surface on both.

    client = keel.Client(base_url="http://127.0.0.1:8000", api_key="keel_...")
    job = client.jobs.create(config={...}, reward={"type": "webhook", "url": ...})
    client.jobs.wait(job.id)

`base_url` and `api_key` fall back to `KEEL_BASE_URL` and `KEEL_API_KEY`. Pass `http_client=`
(an `httpx.Client` / `httpx.AsyncClient`, e.g. on an `ASGITransport`) to control the transport;
the SDK then never closes it. A failed request is retried `max_retries` times; a refused
connection (the API restarting) is retried past that until `reconnect_window_s` after the first
attempt.
"""

from __future__ import annotations

from typing import Any

import httpx

from keel._transport import (
    DEFAULT_RECONNECT_WINDOW_S,
    AsyncTransport,
    ClientConfig,
    SyncTransport,
)
from keel.resources.checkpoints import AsyncCheckpoints, Checkpoints
from keel.resources.episodes import AsyncEpisodes, Episodes
from keel.resources.health import AsyncHealthResource, HealthResource
from keel.resources.jobs import AsyncJobs, Jobs
from keel.resources.keys import AsyncKeys, Keys
from keel.resources.metrics import AsyncMetrics, Metrics
from keel.resources.prompts import AsyncFiles, AsyncPrompts, Files, Prompts
from keel.resources.rewards import AsyncRewards, Rewards
from keel.resources.rollouts import AsyncRollouts, Rollouts

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 3


class Client:
    """Synchronous keel client."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base_s: float = 0.5,
        http_client: httpx.Client | None = None,
        reconnect_window_s: float = DEFAULT_RECONNECT_WINDOW_S,
    ) -> None:
        config = ClientConfig.resolve(
            base_url,
            api_key,
            timeout_s,
            max_retries,
            backoff_base_s,
            reconnect_window_s=reconnect_window_s,
        )
        self._transport = SyncTransport(config, http_client)
        self.jobs = Jobs(self._transport)
        self.prompts = Prompts(self._transport)
        self.files = Files(self._transport)
        self.rollouts = Rollouts(self._transport)
        self.rewards = Rewards(self._transport)
        self.episodes = Episodes(self._transport)
        self.metrics = Metrics(self._transport)
        self.checkpoints = Checkpoints(self._transport)
        self.keys = Keys(self._transport)
        self.health = HealthResource(self._transport)

    @property
    def base_url(self) -> str:
        return self._transport.config.base_url

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient:
    """Asynchronous keel client; the same resources and methods as `Client`, awaited."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base_s: float = 0.5,
        http_client: httpx.AsyncClient | None = None,
        reconnect_window_s: float = DEFAULT_RECONNECT_WINDOW_S,
    ) -> None:
        config = ClientConfig.resolve(
            base_url,
            api_key,
            timeout_s,
            max_retries,
            backoff_base_s,
            reconnect_window_s=reconnect_window_s,
        )
        self._transport = AsyncTransport(config, http_client)
        self.jobs = AsyncJobs(self._transport)
        self.prompts = AsyncPrompts(self._transport)
        self.files = AsyncFiles(self._transport)
        self.rollouts = AsyncRollouts(self._transport)
        self.rewards = AsyncRewards(self._transport)
        self.episodes = AsyncEpisodes(self._transport)
        self.metrics = AsyncMetrics(self._transport)
        self.checkpoints = AsyncCheckpoints(self._transport)
        self.keys = AsyncKeys(self._transport)
        self.health = AsyncHealthResource(self._transport)

    @property
    def base_url(self) -> str:
        return self._transport.config.base_url

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
