"""`/v1/jobs/{id}/checkpoints`, `/v1/checkpoints/{id}` and the streamed tar download of one of
its kinds (`keel.types.checkpoints.CheckpointKind`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from keel.types.checkpoints import DEFAULT_CHECKPOINT_KIND, Checkpoint, CheckpointKind
from keel.types.common import Page
from keel_server.api.authenticated import AuthenticatedRoute
from keel_server.api.deps import Caller, Ctx, Cursor, Id, Limit
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.services import checkpoints as service

CheckpointKindQuery = Annotated[
    CheckpointKind,
    Query(
        description="weights (default), adapter (LoRA jobs, PEFT format), merged (a plain HF "
        "directory; a full fine-tune's is its weights), full (with the trainer state)"
    ),
]

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
async def download_checkpoint(
    checkpoint_id: Id, ctx: Ctx, caller: Caller, kind: CheckpointKindQuery = DEFAULT_CHECKPOINT_KIND
) -> StreamingResponse:
    """A tar of one kind of the checkpoint (default `weights`: the HF model directory without
    trainer state); `Content-Length` and `X-Keel-Sha256` describe its bytes. A kind the
    checkpoint lacks (`adapter` of a full fine-tune) or a checkpoint whose files retention
    deleted is a 409."""
    archive, chunks = await run_in_threadpool(
        service.open_download, ctx, caller, checkpoint_id, kind
    )
    headers = {
        "Content-Length": str(archive.size_bytes),
        "X-Keel-Sha256": archive.sha256,
        "Content-Disposition": f'attachment; filename="{checkpoint_id}-{kind}.tar"',
    }
    return StreamingResponse(chunks, media_type="application/x-tar", headers=headers)
