"""`client.jobs`: create, list, retrieve, cancel, pause, resume, events (SSE) and wait.

`wait()` is the one method that is more than one HTTP call: it polls `retrieve` until the job is
terminal and raises `JobFailedError` / `JobCancelledError` instead of returning quietly.
`events()` reconnects a dropped stream from the last event id; only `max_retries` drops in a row
without an event in between give up, with the SDK's `APIConnectionError`, never a raw httpx one.
A `reconnect` event (the server ends a stream early: its age cap, a shutdown, a revoked key)
reconnects the same way at once; a revoked key's reconnect then raises its 401.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from keel._errors import APIConnectionError, JobCancelledError, JobFailedError, WaitTimeoutError
from keel._sse import ServerEvent, SSEDecoder, aiter_events, iter_events
from keel._transport import ClientConfig
from keel.resources._base import AsyncResource, Call, SyncResource, body
from keel.types.common import Page
from keel.types.jobs import TERMINAL_STATUSES, Job, JobCreated, JobEvent


def _create(config: Any, name: str | None, prompts: Any, reward: Any) -> Call:
    payload: dict[str, Any] = {"config": body(config)}
    if name is not None:
        payload["name"] = name
    if prompts is not None:
        payload["prompts"] = body(prompts)
    if reward is not None:
        payload["reward"] = body(reward)
    return Call("POST", "/v1/jobs", JobCreated, json=payload)


def _list(status: str | list[str] | None, limit: int | None, cursor: str | None) -> Call:
    params = {"status": status, "limit": limit, "cursor": cursor}
    return Call("GET", "/v1/jobs", Page[Job], params=params)


def _action(job_id: str, verb: str) -> Call:
    return Call("POST", f"/v1/jobs/{job_id}/{verb}", Job)


def _resume(job_id: str, lr: float | None, algorithm: Any) -> Call:
    changes: dict[str, Any] = {}
    if lr is not None:
        changes["lr"] = lr
    if algorithm is not None:
        changes["algorithm"] = body(algorithm)
    return Call("POST", f"/v1/jobs/{job_id}/resume", Job, json=changes or None)


def _finished(job: Job) -> Job:
    """Return a succeeded job; raise for failed or cancelled ones."""
    if job.status == "failed":
        raise JobFailedError(job)
    if job.status == "cancelled":
        raise JobCancelledError(job)
    return job


# The event a server sends before it ends a stream early; not a job event.
RECONNECT = "reconnect"


def _to_job_event(event: ServerEvent) -> JobEvent:
    """The server sends each `JobEvent` whole as the event's JSON data (id and time included)."""
    return JobEvent.model_validate(event.data)


class _Reconnects:
    """Consecutive dropped connections of one event stream: each event received resets the
    count, so only a stream that keeps failing without progress gives up."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.drops = 0

    def received(self) -> None:
        self.drops = 0

    def dropped(self, exc: APIConnectionError) -> float:
        """Seconds to wait before reconnecting; past `max_retries` in a row, raises `exc`."""
        self.drops += 1
        if self.drops > self.config.max_retries:
            raise exc
        return self.config.backoff_base_s


def _follow(follow: bool) -> dict[str, str] | None:
    return None if follow else {"follow": "false"}


def _sse_headers(last_event_id: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return headers


class Jobs(SyncResource):
    def create(
        self, config: Any, *, name: str | None = None, prompts: Any = None, reward: Any = None
    ) -> JobCreated:
        """Create a job; the answer holds the reward token (and webhook secret) once."""
        return self._run(_create(config, name, prompts, reward))

    def list(
        self,
        *,
        status: str | list[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Job]:
        return self._run(_list(status, limit, cursor))

    def retrieve(self, job_id: str) -> Job:
        return self._run(Call("GET", f"/v1/jobs/{job_id}", Job))

    def cancel(self, job_id: str) -> Job:
        return self._run(_action(job_id, "cancel"))

    def pause(self, job_id: str) -> Job:
        return self._run(_action(job_id, "pause"))

    def resume(self, job_id: str, *, lr: float | None = None, algorithm: Any = None) -> Job:
        """Resume a paused job, optionally with a new learning rate or `config.algorithm`."""
        return self._run(_resume(job_id, lr, algorithm))

    def events(
        self, job_id: str, *, last_event_id: str | None = None, follow: bool = True
    ) -> Iterator[JobEvent]:
        """Stream the job's events until its final one (`follow=False`: the events so far); a
        dropped connection resumes from the last event seen."""
        decoder = SSEDecoder()
        decoder.last_event_id = last_event_id
        reconnects = _Reconnects(self._transport.config)
        while True:
            headers = _sse_headers(decoder.last_event_id)
            path, params = f"/v1/jobs/{job_id}/events", _follow(follow)
            try:
                with self._transport.stream("GET", path, params=params, headers=headers) as r:
                    for event in iter_events(r.iter_lines(), decoder):
                        reconnects.received()
                        if event.event == RECONNECT:
                            break
                        yield _to_job_event(event)
                    else:
                        return
            except APIConnectionError as exc:
                time.sleep(reconnects.dropped(exc))

    def wait(
        self, job_id: str, *, timeout_s: float | None = None, poll_interval_s: float = 1.0
    ) -> Job:
        """Block until the job is terminal; return it if it succeeded, else raise `JobError`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.retrieve(job_id)
            if job.status in TERMINAL_STATUSES:
                return _finished(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"job {job_id} still {job.status} after {timeout_s} s")
            time.sleep(poll_interval_s)


class AsyncJobs(AsyncResource):
    async def create(
        self, config: Any, *, name: str | None = None, prompts: Any = None, reward: Any = None
    ) -> JobCreated:
        """Create a job; the answer holds the reward token (and webhook secret) once."""
        return await self._run(_create(config, name, prompts, reward))

    async def list(
        self,
        *,
        status: str | list[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Job]:
        return await self._run(_list(status, limit, cursor))

    async def retrieve(self, job_id: str) -> Job:
        return await self._run(Call("GET", f"/v1/jobs/{job_id}", Job))

    async def cancel(self, job_id: str) -> Job:
        return await self._run(_action(job_id, "cancel"))

    async def pause(self, job_id: str) -> Job:
        return await self._run(_action(job_id, "pause"))

    async def resume(self, job_id: str, *, lr: float | None = None, algorithm: Any = None) -> Job:
        """Resume a paused job, optionally with a new learning rate or `config.algorithm`."""
        return await self._run(_resume(job_id, lr, algorithm))

    async def events(
        self, job_id: str, *, last_event_id: str | None = None, follow: bool = True
    ) -> AsyncIterator[JobEvent]:
        """Stream the job's events until its final one (`follow=False`: the events so far); a
        dropped connection resumes from the last event seen."""
        decoder = SSEDecoder()
        decoder.last_event_id = last_event_id
        reconnects = _Reconnects(self._transport.config)
        while True:
            headers = _sse_headers(decoder.last_event_id)
            path, params = f"/v1/jobs/{job_id}/events", _follow(follow)
            try:
                async with self._transport.stream("GET", path, params=params, headers=headers) as r:
                    async for event in aiter_events(r.aiter_lines(), decoder):
                        reconnects.received()
                        if event.event == RECONNECT:
                            break
                        yield _to_job_event(event)
                    else:
                        return
            except APIConnectionError as exc:
                await asyncio.sleep(reconnects.dropped(exc))

    async def wait(
        self, job_id: str, *, timeout_s: float | None = None, poll_interval_s: float = 1.0
    ) -> Job:
        """Block until the job is terminal; return it if it succeeded, else raise `JobError`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.retrieve(job_id)
            if job.status in TERMINAL_STATUSES:
                return _finished(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"job {job_id} still {job.status} after {timeout_s} s")
            await asyncio.sleep(poll_interval_s)
