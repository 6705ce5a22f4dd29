"""API keys: created (shown once) by the admin for any project or by a key for its own project;
listed within the caller's project, revoked there or, by the admin, in any project.

A key minted by another key records it (`parent_key_id`) and is revoked with it, and so are the
keys it minted in turn: a key handed out never outlives the key it came from. Revoking ends the
revoked keys' event streams (`services.streams`: at once in this process).
"""

from __future__ import annotations

from keel.types.keys import ApiKey, ApiKeyCreate, ApiKeyCreated, Whoami
from keel_server.db import keys as keys_db
from keel_server.db import session_scope
from keel_server.platform.security import hash_secret, new_api_key
from keel_server.services.auth import require_api_key
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, not_found

PREFIX_CHARS = 12


def create(ctx: ServiceContext, principal: Principal, req: ApiKeyCreate) -> ApiKeyCreated:
    require_api_key(principal)
    secret = new_api_key()
    with session_scope(ctx.sessions) as session:
        own = keys_db.get_project(session, principal.project_id)
        if req.project is None or req.project == own.name:
            project = own
        elif principal.is_admin:
            project = keys_db.get_or_create_project(session, req.project)
        else:
            raise ServiceError(
                "forbidden", "only the admin key may create keys for another project"
            )
        row = keys_db.insert_api_key(
            session,
            project.id,
            key_hash=hash_secret(secret),
            prefix=secret[:PREFIX_CHARS],
            name=req.name,
            parent_key_id=principal.key_id,
        )
        return ApiKeyCreated(**_key(row).model_dump(), key=secret, project=project.name)


def list_(ctx: ServiceContext, principal: Principal) -> list[ApiKey]:
    require_api_key(principal)
    with session_scope(ctx.sessions) as session:
        return [_key(r) for r in keys_db.list_keys(session, principal.project_id)]


def revoke(ctx: ServiceContext, principal: Principal, key_id: str) -> ApiKey:
    require_api_key(principal)
    with session_scope(ctx.sessions) as session:
        row = keys_db.get_key(session, key_id)
        if row is None or (row.project_id != principal.project_id and not principal.is_admin):
            raise not_found("key", key_id)
        revoked = keys_db.revoke_key(session, key_id)
        session.refresh(row)
        key = _key(row)
    for revoked_id in revoked:
        ctx.streams.close_owner(Principal(key.project_id, key_id=revoked_id).owner, "revoked")
    return key


def whoami(principal: Principal) -> Whoami:
    return Whoami(
        project_id=principal.project_id, is_admin=principal.is_admin, job_id=principal.job_id
    )


def _key(row) -> ApiKey:
    return ApiKey(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
