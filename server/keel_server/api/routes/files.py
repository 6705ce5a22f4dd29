"""`/v1/files`: upload a JSONL prompt file (multipart field `file`) for a dataset job; delete
one."""

from __future__ import annotations

from fastapi import APIRouter, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from keel.types.prompts import FileObject
from keel_server.api.authenticated import UploadRoute
from keel_server.api.deps import Caller, Ctx, Id
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.services import files as service

router = APIRouter(tags=["files"], route_class=UploadRoute, responses=ROUTE_ERRORS)


@router.post("/files", response_model=FileObject, status_code=201)
async def upload_file(file: UploadFile, ctx: Ctx, caller: Caller) -> FileObject:
    content = await file.read()
    return await run_in_threadpool(
        service.upload, ctx, caller, file.filename or "prompts.jsonl", content
    )


@router.delete("/files/{file_id}", status_code=204, response_class=Response)
def delete_file(file_id: Id, ctx: Ctx, caller: Caller) -> Response:
    """Delete an uploaded file (jobs created from it keep their prompts)."""
    service.delete(ctx, caller, file_id)
    return Response(status_code=204)
