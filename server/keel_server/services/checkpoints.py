"""Checkpoints: list, retrieve, and open one kind of one for the streamed (deterministic tar)
download. The size and sha256 of every kind were computed by the worker at registration; a
download never hashes anything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from keel.types.checkpoints import Checkpoint, CheckpointArchive, CheckpointKind
from keel.types.common import Page
from keel_server.db import checkpoints as ckpt_db
from keel_server.db import session_scope
from keel_server.platform.storage import iter_archive
from keel_server.services import convert
from keel_server.services.auth import load_checkpoint, load_job
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError
from keel_server.services.paging import int_cursor, page_limit


def list_(
    ctx: ServiceContext, principal: Principal, job_id: str, *, cursor: str | None, limit: int | None
) -> Page[Checkpoint]:
    limit = page_limit(ctx, limit)
    after = int_cursor(cursor)[0] if cursor is not None else None
    with session_scope(ctx.sessions) as session:
        load_job(session, principal, job_id)
        rows = ckpt_db.list_checkpoints(session, job_id, after_step=after, limit=limit)
        data = [convert.checkpoint(r) for r in rows[:limit]]
    has_more = len(rows) > limit
    next_cursor = str(data[-1].step) if has_more else None
    return Page[Checkpoint](data=data, has_more=has_more, next_cursor=next_cursor)


def retrieve(ctx: ServiceContext, principal: Principal, checkpoint_id: str) -> Checkpoint:
    with session_scope(ctx.sessions) as session:
        return convert.checkpoint(load_checkpoint(session, principal, checkpoint_id))


def open_download(
    ctx: ServiceContext, principal: Principal, checkpoint_id: str, kind: CheckpointKind
) -> tuple[CheckpointArchive, Iterator[bytes]]:
    """The kind's archive record and an iterator over exactly its `size_bytes` bytes hashing to
    its `sha256`."""
    with session_scope(ctx.sessions) as session:
        row = load_checkpoint(session, principal, checkpoint_id)
        meta, path = convert.checkpoint(row), Path(row.path)
    if meta.deleted_at is not None:
        raise ServiceError(
            "conflict",
            f"the files of checkpoint {checkpoint_id} were deleted by its job's retention "
            "policy (checkpoint_keep_last)",
            state={"deleted_at": meta.deleted_at.isoformat()},
        )
    archive = meta.kinds.get(kind)
    if archive is None:
        raise ServiceError("conflict", _missing_kind(checkpoint_id, kind, sorted(meta.kinds)))
    if not path.is_dir():
        raise ServiceError("not_found", f"the files of checkpoint {checkpoint_id} are gone")
    return archive, iter_archive(path, kind=kind)


def _missing_kind(checkpoint_id: str, kind: str, available: list[str]) -> str:
    if kind == "adapter":
        return (
            f"checkpoint {checkpoint_id} has no adapter: its job is a full fine-tune, not a LoRA "
            "job; download kind=weights (or merged, the same model)"
        )
    return (
        f"checkpoint {checkpoint_id} has no {kind!r} archive (it predates per-kind archives); "
        f"available: {', '.join(available)}"
    )
