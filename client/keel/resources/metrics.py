"""`client.metrics`: a job's per-step metric rows, filtered by name and step range."""

from __future__ import annotations

from keel.resources._base import AsyncResource, Call, SyncResource
from keel.types.metrics import MetricPoint


def _list(
    job_id: str,
    name: str | list[str] | None,
    step_min: int | None,
    step_max: int | None,
    limit: int | None,
) -> Call:
    params = {"name": name, "step_min": step_min, "step_max": step_max, "limit": limit}
    return Call("GET", f"/v1/jobs/{job_id}/metrics", list[MetricPoint], params=params)


class Metrics(SyncResource):
    def list(
        self,
        job_id: str,
        *,
        name: str | list[str] | None = None,
        step_min: int | None = None,
        step_max: int | None = None,
        limit: int | None = None,
    ) -> list[MetricPoint]:
        return self._run(_list(job_id, name, step_min, step_max, limit))


class AsyncMetrics(AsyncResource):
    async def list(
        self,
        job_id: str,
        *,
        name: str | list[str] | None = None,
        step_min: int | None = None,
        step_max: int | None = None,
        limit: int | None = None,
    ) -> list[MetricPoint]:
        return await self._run(_list(job_id, name, step_min, step_max, limit))
