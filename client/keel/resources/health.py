"""`client.health`: liveness and readiness (database and broker reachable)."""

from __future__ import annotations

from keel.resources._base import AsyncResource, Call, SyncResource
from keel.types.common import Health


class HealthResource(SyncResource):
    def live(self) -> Health:
        return self._run(Call("GET", "/health/live", Health))

    def ready(self) -> Health:
        return self._run(Call("GET", "/health/ready", Health))


class AsyncHealthResource(AsyncResource):
    async def live(self) -> Health:
        return await self._run(Call("GET", "/health/live", Health))

    async def ready(self) -> Health:
        return await self._run(Call("GET", "/health/ready", Health))
