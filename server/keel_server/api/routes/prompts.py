"""`/v1/jobs/{id}/prompts`: post batches to a client-fed job; list a job's prompts."""

from __future__ import annotations

from fastapi import APIRouter

from keel.types.common import Page
from keel.types.prompts import Prompt, PromptBatch, PromptBatchResult
from keel_server.api.authenticated import UploadRoute
from keel_server.api.deps import Caller, Ctx, Cursor, Id, IdempotencyKey, Limit
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.services import prompts as service

router = APIRouter(tags=["prompts"], route_class=UploadRoute, responses=ROUTE_ERRORS)


@router.post("/jobs/{job_id}/prompts", response_model=PromptBatchResult)
def add_prompts(
    job_id: Id, body: PromptBatch, ctx: Ctx, caller: Caller, idem: IdempotencyKey = None
) -> PromptBatchResult:
    return service.add_batch(ctx, caller, job_id, body, idempotency_key=idem)


@router.get("/jobs/{job_id}/prompts", response_model=Page[Prompt])
def list_prompts(
    job_id: Id, ctx: Ctx, caller: Caller, cursor: Cursor = None, limit: Limit = None
) -> Page[Prompt]:
    return service.list_(ctx, caller, job_id, cursor=cursor, limit=limit)
