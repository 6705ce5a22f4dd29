"""FastAPI dependencies: the service context of the app and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool

from keel_server.services import auth
from keel_server.services.context import Principal, ServiceContext


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


async def get_principal(
    ctx: Annotated[ServiceContext, Depends(get_ctx)],
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    token = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    return await run_in_threadpool(auth.authenticate, ctx, token)


Ctx = Annotated[ServiceContext, Depends(get_ctx)]
Caller = Annotated[Principal, Depends(get_principal)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
