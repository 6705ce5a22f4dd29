"""`client.keys`: create (the secret is returned once), list and revoke API keys; whoami."""

from __future__ import annotations

from keel.resources._base import AsyncResource, Call, SyncResource
from keel.types.keys import ApiKey, ApiKeyCreated, Whoami


def _create(project: str | None, name: str | None) -> Call:
    payload = {k: v for k, v in {"project": project, "name": name}.items() if v is not None}
    return Call("POST", "/v1/keys", ApiKeyCreated, json=payload)


class Keys(SyncResource):
    def create(self, *, project: str | None = None, name: str | None = None) -> ApiKeyCreated:
        """A new key for `project` (admin only; created if new) or for the caller's project."""
        return self._run(_create(project, name))

    def list(self) -> list[ApiKey]:
        return self._run(Call("GET", "/v1/keys", list[ApiKey]))

    def revoke(self, key_id: str) -> ApiKey:
        return self._run(Call("DELETE", f"/v1/keys/{key_id}", ApiKey))

    def whoami(self) -> Whoami:
        return self._run(Call("GET", "/v1/whoami", Whoami))


class AsyncKeys(AsyncResource):
    async def create(self, *, project: str | None = None, name: str | None = None) -> ApiKeyCreated:
        """A new key for `project` (admin only; created if new) or for the caller's project."""
        return await self._run(_create(project, name))

    async def list(self) -> list[ApiKey]:
        return await self._run(Call("GET", "/v1/keys", list[ApiKey]))

    async def revoke(self, key_id: str) -> ApiKey:
        return await self._run(Call("DELETE", f"/v1/keys/{key_id}", ApiKey))

    async def whoami(self) -> Whoami:
        return await self._run(Call("GET", "/v1/whoami", Whoami))
