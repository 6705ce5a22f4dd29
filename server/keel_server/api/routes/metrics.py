"""`/v1/jobs/{id}/metrics`: per-step metric rows by name and step range."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from keel.types.common import Text
from keel.types.metrics import MetricPoint
from keel_server.api.authenticated import AuthenticatedRoute
from keel_server.api.deps import Caller, Ctx, Id, Step
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.services import metrics as service

router = APIRouter(tags=["metrics"], route_class=AuthenticatedRoute, responses=ROUTE_ERRORS)


@router.get("/jobs/{job_id}/metrics", response_model=list[MetricPoint])
def list_metrics(
    job_id: Id,
    ctx: Ctx,
    caller: Caller,
    name: Annotated[list[Text], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    step_min: Step = None,
    step_max: Step = None,
    limit: Annotated[int | None, Query(ge=1, le=service.MAX_POINTS)] = None,
) -> list[MetricPoint]:
    names = [n for value in name for n in value.split(",") if n]
    return service.list_(
        ctx, caller, job_id, names=names, step_min=step_min, step_max=step_max, limit=limit
    )
