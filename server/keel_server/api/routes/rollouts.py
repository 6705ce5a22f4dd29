"""`/v1/jobs/{id}/rollouts` and `/v1/rollouts/{id}`: list by status and step; retrieve."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from keel.types.common import Page, Text
from keel.types.rollouts import Rollout
from keel_server.api.authenticated import AuthenticatedRoute
from keel_server.api.deps import Caller, Ctx, Id, Limit, RolloutCursor, Step
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.services import rollouts as service

router = APIRouter(tags=["rollouts"], route_class=AuthenticatedRoute, responses=ROUTE_ERRORS)


@router.get("/jobs/{job_id}/rollouts", response_model=Page[Rollout])
def list_rollouts(
    job_id: Id,
    ctx: Ctx,
    caller: Caller,
    status: Annotated[list[Text], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    step: Step = None,
    cursor: RolloutCursor = None,
    limit: Limit = None,
) -> Page[Rollout]:
    statuses = [s for value in status for s in value.split(",") if s]
    return service.list_(
        ctx, caller, job_id, statuses=statuses, step=step, cursor=cursor, limit=limit
    )


@router.get("/rollouts/{rollout_id}", response_model=Rollout)
def retrieve_rollout(rollout_id: Id, ctx: Ctx, caller: Caller) -> Rollout:
    return service.retrieve(ctx, caller, rollout_id)
