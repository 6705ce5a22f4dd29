"""`client.rollouts`: list a job's rollouts by status and step, retrieve one."""

from __future__ import annotations

from keel.resources._base import AsyncResource, Call, SyncResource
from keel.types.common import Page
from keel.types.rollouts import Rollout


def _list(
    job_id: str, status: str | None, step: int | None, limit: int | None, cursor: str | None
) -> Call:
    params = {"status": status, "step": step, "limit": limit, "cursor": cursor}
    return Call("GET", f"/v1/jobs/{job_id}/rollouts", Page[Rollout], params=params)


class Rollouts(SyncResource):
    def list(
        self,
        job_id: str,
        *,
        status: str | None = None,
        step: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Rollout]:
        return self._run(_list(job_id, status, step, limit, cursor))

    def retrieve(self, rollout_id: str) -> Rollout:
        return self._run(Call("GET", f"/v1/rollouts/{rollout_id}", Rollout))


class AsyncRollouts(AsyncResource):
    async def list(
        self,
        job_id: str,
        *,
        status: str | None = None,
        step: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Rollout]:
        return await self._run(_list(job_id, status, step, limit, cursor))

    async def retrieve(self, rollout_id: str) -> Rollout:
        return await self._run(Call("GET", f"/v1/rollouts/{rollout_id}", Rollout))
