"""`/v1/jobs`: create, list, retrieve, cancel, pause, resume, and the SSE event stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from keel.types.common import Page, Text
from keel.types.jobs import Job, JobCreate, JobCreated, JobResume
from keel_server.api.authenticated import UploadRoute
from keel_server.api.deps import Caller, Ctx, Id, IdempotencyKey, JobCursor, LastEventId, Limit
from keel_server.api.errors import ROUTE_ERRORS, error_responses
from keel_server.services import auth
from keel_server.services import events as events_service
from keel_server.services import jobs as service
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.streams import StreamSlot

FollowQuery = Annotated[
    bool,
    Query(
        description="false: end the stream after the events so far instead of waiting for "
        "the job's final event (the history of a running or paused job)"
    ),
]

router = APIRouter(tags=["jobs"], route_class=UploadRoute, responses=ROUTE_ERRORS)


@router.post(
    "/jobs",
    response_model=JobCreated,
    status_code=201,
    responses={
        200: {"model": JobCreated, "description": "A replay of an earlier Idempotency-Key."},
        **error_responses(503),
    },
)
def create_job(
    body: JobCreate, ctx: Ctx, caller: Caller, response: Response, idem: IdempotencyKey = None
) -> JobCreated:
    job, created = service.create(ctx, caller, body, idempotency_key=idem)
    if not created:
        response.status_code = 200
    return job


@router.get("/jobs", response_model=Page[Job])
def list_jobs(
    ctx: Ctx,
    caller: Caller,
    status: Annotated[list[Text], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    cursor: JobCursor = None,
    limit: Limit = None,
) -> Page[Job]:
    statuses = [s for value in status for s in value.split(",") if s]
    return service.list_(ctx, caller, statuses=statuses, cursor=cursor, limit=limit)


@router.get("/jobs/{job_id}", response_model=Job)
def retrieve_job(job_id: Id, ctx: Ctx, caller: Caller) -> Job:
    return service.retrieve(ctx, caller, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=Job)
def cancel_job(job_id: Id, ctx: Ctx, caller: Caller) -> Job:
    return service.cancel(ctx, caller, job_id)


@router.post("/jobs/{job_id}/pause", response_model=Job)
def pause_job(job_id: Id, ctx: Ctx, caller: Caller) -> Job:
    return service.pause(ctx, caller, job_id)


@router.post("/jobs/{job_id}/resume", response_model=Job, responses=error_responses(503))
def resume_job(job_id: Id, ctx: Ctx, caller: Caller, body: JobResume | None = None) -> Job:
    """Resume a paused job; the optional body changes its learning rate or algorithm."""
    return service.resume(ctx, caller, job_id, body)


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse)
async def job_events(
    job_id: Id,
    ctx: Ctx,
    caller: Caller,
    last_event_id: LastEventId = None,
    follow: FollowQuery = True,
) -> StreamingResponse:
    """Server-Sent Events: `status`, `metrics`, `checkpoint`, `webhook` (a failed delivery),
    `guard` (a stability-guard trigger fired), `prompts` (a `client`-fed job waits for prompts);
    each `id:` resumes the stream via `Last-Event-ID`. The stream ends after the job's final
    event, or with `follow=false` after the events so far. A `reconnect` event (its data says
    why: `max_age`, `shutdown`, `revoked`) ends it early: connect again with `Last-Event-ID`.
    A key holds at most `KEEL_SSE_MAX_STREAMS_PER_KEY` streams per API process (429 past it)."""
    after = await run_in_threadpool(events_service.open_stream, ctx, caller, job_id, last_event_id)
    slot = ctx.streams.open(caller.owner, limit=ctx.settings.sse_max_streams_per_key)
    stream = _stream(ctx, caller, job_id, after, follow, slot)
    slot.bind(stream)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _stream(
    ctx: ServiceContext, caller: Principal, job_id: str, after: int, follow: bool, slot: StreamSlot
) -> AsyncIterator[str]:
    settings = ctx.settings
    opened = last_sent = key_checked = time.monotonic()
    try:
        yield f"retry: {int(settings.sse_poll_interval_s * 1000)}\n\n"
        while True:
            events, ended = await run_in_threadpool(
                events_service.poll, ctx, job_id, after_id=after
            )
            for event in events:
                data = json.dumps(event.model_dump(mode="json"))
                yield f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"
                after, last_sent = event.id, time.monotonic()
            if ended or (not follow and not events):  # a poll came back empty: nothing more so far
                return
            now = time.monotonic()
            if now - key_checked > settings.sse_key_check_s:
                key_checked = now
                if not await run_in_threadpool(auth.still_valid, ctx, caller):
                    slot.closed_because = "revoked"
            reason = _end_early(slot, ctx.streams.draining, now - opened, settings.sse_max_age_s)
            if reason is not None:
                yield f"event: reconnect\ndata: {json.dumps({'reason': reason})}\n\n"
                return
            if now - last_sent > settings.sse_keepalive_s:
                yield ": keep-alive\n\n"
                last_sent = now
            await asyncio.sleep(settings.sse_poll_interval_s)
    finally:
        slot.release()


def _end_early(slot: StreamSlot, draining: bool, age_s: float, max_age_s: float) -> str | None:
    """Why an open stream must end before its job does, if it must."""
    if slot.closed_because is not None:
        return slot.closed_because
    if draining:
        return "shutdown"
    if age_s > max_age_s:
        return "max_age"
    return None
