"""`/v1/keys` and `/v1/whoami`: create (shown once), list, revoke API keys."""

from __future__ import annotations

from fastapi import APIRouter

from keel.types.keys import ApiKey, ApiKeyCreate, ApiKeyCreated, Whoami
from keel_server.api.authenticated import AuthenticatedRoute
from keel_server.api.deps import Caller, Ctx, Id
from keel_server.api.errors import ROUTE_ERRORS
from keel_server.services import keys as service

router = APIRouter(tags=["keys"], route_class=AuthenticatedRoute, responses=ROUTE_ERRORS)


@router.post("/keys", response_model=ApiKeyCreated, status_code=201)
def create_key(body: ApiKeyCreate, ctx: Ctx, caller: Caller) -> ApiKeyCreated:
    return service.create(ctx, caller, body)


@router.get("/keys", response_model=list[ApiKey])
def list_keys(ctx: Ctx, caller: Caller) -> list[ApiKey]:
    return service.list_(ctx, caller)


@router.delete("/keys/{key_id}", response_model=ApiKey)
def revoke_key(key_id: Id, ctx: Ctx, caller: Caller) -> ApiKey:
    return service.revoke(ctx, caller, key_id)


@router.get("/whoami", response_model=Whoami)
def whoami(caller: Caller) -> Whoami:
    return service.whoami(caller)
