"""`retrieve_future`: the answer to a Tinker future, waited for a bounded time.

The SDK polls a future until it gets a result: it sends `retrieve_future` again at once on a 408
(`try_again`, with a queue state), re-sends the original call on a 410 (the promise is gone), and
raises `RequestFailedError` with the category for `{"error", "category"}`. So the API waits up to
`Settings.tinker_retrieve_wait_s` (under the SDK's 45 s read timeout) for the worker, checking
the row every `tinker_retrieve_poll_s`, and then answers 408: a future outlives any number of
polls, and an API restart loses nothing (the row is the future).

Results are stored as the SDK's JSON; a ForwardBackwardOutput or SampleResponse is encoded to
protobuf here when the SDK asks for it (`Accept: application/x-protobuf`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from keel_server.db import session_scope
from keel_server.db import tinker as tinker_db
from keel_server.platform.tinker_wire import (
    encode_forward_backward_output,
    encode_sample_response,
)
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, not_found
from keel_server.services.tinker import load_model

_PROTO_ENCODERS = {
    "forward": encode_forward_backward_output,
    "forward_backward": encode_forward_backward_output,
    "sample": encode_sample_response,
}
_ENDED = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class FutureAnswer:
    """What `retrieve_future` sends: `status` with a JSON `body`, or protobuf `proto` bytes."""

    status: int
    body: dict[str, Any] | None = None
    proto: bytes | None = None


@dataclass(frozen=True)
class _Snapshot:
    state: str
    kind: str
    result: dict[str, Any] | None
    error: str | None
    category: str | None
    job_status: str
    job_has_worker: bool


def _snapshot(ctx: ServiceContext, principal: Principal, request_id: str) -> _Snapshot:
    with session_scope(ctx.sessions) as session:
        row = tinker_db.get_request(session, request_id)
        if row is None:
            raise not_found("future", request_id)
        try:
            job = load_model(session, principal, row.job_id)
        except ServiceError:
            raise not_found("future", request_id) from None
        return _Snapshot(
            state=row.state,
            kind=row.kind,
            result=row.result,
            error=row.error,
            category=row.error_category,
            job_status=job.status,
            job_has_worker=job.lease_owner is not None,
        )


async def retrieve(
    ctx: ServiceContext, principal: Principal, request_id: str, *, want_proto: bool
) -> FutureAnswer:
    deadline = time.monotonic() + ctx.settings.tinker_retrieve_wait_s
    while True:
        snap = await asyncio.to_thread(_snapshot, ctx, principal, request_id)
        if snap.state in ("done", "failed") or snap.job_status in _ENDED:
            return _answer(request_id, snap, want_proto=want_proto)
        if time.monotonic() >= deadline:
            return _try_again(request_id, snap)
        await asyncio.sleep(ctx.settings.tinker_retrieve_poll_s)


def _answer(request_id: str, snap: _Snapshot, *, want_proto: bool) -> FutureAnswer:
    if snap.state == "failed":
        return FutureAnswer(200, {"error": snap.error or "failed", "category": _category(snap)})
    if snap.state != "done":  # its model ended with the call still open: it will never run
        detail = f"future {request_id} is gone: its model is {snap.job_status}"
        return FutureAnswer(410, {"code": "gone", "detail": detail})
    result = snap.result or {}
    encoder = _PROTO_ENCODERS.get(snap.kind)
    if want_proto and encoder is not None:
        return FutureAnswer(200, proto=encoder(result))
    return FutureAnswer(200, result)


def _category(snap: _Snapshot) -> str:
    return snap.category if snap.category in ("user", "server") else "unknown"


def _try_again(request_id: str, snap: _Snapshot) -> FutureAnswer:
    body: dict[str, Any] = {"type": "try_again", "request_id": request_id, "queue_state": "active"}
    if not snap.job_has_worker:
        body["queue_state"] = "paused_capacity"
        body["queue_state_reason"] = "waiting for a keel worker to load the model"
    return FutureAnswer(408, body)
