"""FastAPI dependencies: the service context of the app and the authenticated principal.

The principal is authenticated by `keel_server.api.guard.AuthenticatedRoute` before the body is
read; `Caller` hands it to the route and declares the bearer scheme in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from keel_server.services.context import Principal, ServiceContext

bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`keel_sk_…`), the admin key, or a job's reward token (`keel_rt_…`).",
)


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


def get_principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    return request.state.principal


Ctx = Annotated[ServiceContext, Depends(get_ctx)]
Caller = Annotated[Principal, Depends(get_principal)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
