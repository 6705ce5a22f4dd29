"""`/v1/jobs/{id}/checkpoints`, `/v1/checkpoints/{id}` and its streamed tar download."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from keel.types.checkpoints import Checkpoint
from keel.types.common import Page
from keel_server.api.deps import Caller, Ctx, Cursor, Id, Limit
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.api.guard import AuthenticatedRoute
from keel_server.services import checkpoints as service

router = APIRouter(tags=["checkpoints"], route_class=AuthenticatedRoute, responses=ROUTE_ERRORS)


@router.get("/jobs/{job_id}/checkpoints", response_model=Page[Checkpoint])
def list_checkpoints(
    job_id: Id, ctx: Ctx, caller: Caller, cursor: Cursor = None, limit: Limit = None
) -> Page[Checkpoint]:
    return service.list_(ctx, caller, job_id, cursor=cursor, limit=limit)


@router.get("/checkpoints/{checkpoint_id}", response_model=Checkpoint)
def retrieve_checkpoint(checkpoint_id: Id, ctx: Ctx, caller: Caller) -> Checkpoint:
    return service.retrieve(ctx, caller, checkpoint_id)


@router.get("/checkpoints/{checkpoint_id}/download", response_class=StreamingResponse)
async def download_checkpoint(checkpoint_id: Id, ctx: Ctx, caller: Caller) -> StreamingResponse:
    """A tar of the HF directory; `Content-Length` and `X-Keel-Sha256` describe its bytes."""
    meta, chunks = await run_in_threadpool(service.open_download, ctx, caller, checkpoint_id)
    headers = {
        "Content-Length": str(meta.size_bytes),
        "X-Keel-Sha256": meta.sha256,
        "Content-Disposition": f'attachment; filename="{meta.id}.tar"',
    }
    return StreamingResponse(chunks, media_type="application/x-tar", headers=headers)
