"""`/v1/files`: upload a JSONL prompt file (multipart field `file`) for a dataset job."""

from __future__ import annotations

from fastapi import APIRouter, UploadFile
from fastapi.concurrency import run_in_threadpool

from keel.types.prompts import FileObject
from keel_server.api.authenticated import UploadRoute
from keel_server.api.deps import Caller, Ctx
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.services import files as service

router = APIRouter(tags=["files"], route_class=UploadRoute, responses=ROUTE_ERRORS)


@router.post("/files", response_model=FileObject, status_code=201)
async def upload_file(file: UploadFile, ctx: Ctx, caller: Caller) -> FileObject:
    content = await file.read()
    return await run_in_threadpool(
        service.upload, ctx, caller, file.filename or "prompts.jsonl", content
    )
