"""`/health/live` and `/health/ready` (also under `/v1`); no authentication."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from keel.types.common import Health
from keel_server.api.deps import Ctx
from keel_server.services import health as service

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=Health)
def live() -> Health:
    return service.live()


@router.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
def ready(ctx: Ctx) -> JSONResponse:
    result = service.ready(ctx)
    return JSONResponse(result.model_dump(), status_code=200 if result.status == "ok" else 503)
