"""Uploaded JSONL prompt files: validated line by line at upload, read back at job creation
(a job keeps its own copy of the prompts, so deleting a file never touches a job).

A project keeps at most `max_file_bytes_per_project` of files (413 past it). The file is written
before its row; a row that cannot be stored removes the file again, so no file is ever left
without a row. Concurrent uploads of one project may pass the quota by the size of one upload."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from keel.types.prompts import FileObject, PromptIn
from keel_server.db import keys as files_db
from keel_server.db import new_id, session_scope
from keel_server.platform.storage import files_dir
from keel_server.services.auth import require_api_key
from keel_server.services.context import Principal, ServiceContext
from keel_server.services.errors import ServiceError, invalid, not_found

MAX_LINE_ERRORS = 20


def upload(ctx: ServiceContext, principal: Principal, filename: str, content: bytes) -> FileObject:
    require_api_key(principal)
    name = _clean_filename(filename)
    prompts = parse_jsonl(content)
    quota = ctx.settings.max_file_bytes_per_project
    with session_scope(ctx.sessions) as session:
        _check_quota(files_db.file_bytes(session, principal.project_id), len(content), quota)
    file_id = new_id("file")
    folder = files_dir(ctx.settings.artifacts_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{file_id}.jsonl"
    path.write_bytes(content)
    try:
        with session_scope(ctx.sessions) as session:
            row = files_db.insert_file(
                session,
                principal.project_id,
                file_id=file_id,
                filename=name,
                path=str(path),
                num_prompts=len(prompts),
                size_bytes=len(content),
            )
            return _file(row)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def delete(ctx: ServiceContext, principal: Principal, file_id: str) -> None:
    """Delete the file's row, then its bytes (a crash in between leaves bytes no row names,
    never a row without its bytes)."""
    require_api_key(principal)
    with session_scope(ctx.sessions) as session:
        row = files_db.get_file(session, file_id, project_id=principal.project_id)
        if row is None or not files_db.delete_file(session, file_id, project_id=row.project_id):
            raise not_found("file", file_id)
        path = Path(row.path)
    path.unlink(missing_ok=True)


def _clean_filename(filename: str) -> str:
    """The name as stored: control characters (NUL included) are refused, not stored."""
    if any(ord(c) < 32 or ord(c) == 127 for c in filename):
        raise invalid(["body", "file", "filename"], "the file name holds a control character")
    return filename[:255]


def _check_quota(used: int, adding: int, quota: int) -> None:
    if used + adding > quota:
        raise ServiceError(
            "payload_too_large",
            f"this upload of {adding} bytes would take the project's files to {used + adding} "
            f"bytes, over its quota of {quota} (KEEL_MAX_FILE_BYTES_PER_PROJECT): delete files "
            "it no longer needs",
            state={"used_bytes": used, "quota_bytes": quota},
        )


def _file(row) -> FileObject:
    return FileObject(
        id=row.id,
        filename=row.filename,
        num_prompts=row.num_prompts,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
    )


def parse_jsonl(content: bytes) -> list[PromptIn]:
    """Every non-blank line must be a `PromptIn` object; errors name the line (1-based)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(["body", "file"], f"not UTF-8 text: {exc}") from exc
    prompts, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompts.append(PromptIn.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            msg = str(exc).splitlines()[0] if isinstance(exc, json.JSONDecodeError) else _first(exc)
            errors.append({"loc": ["body", "file", f"line {number}"], "msg": msg})
            if len(errors) >= MAX_LINE_ERRORS:
                break
    if errors:
        first = errors[0]
        raise ServiceError("validation_error", f"{first['loc'][-1]}: {first['msg']}", errors=errors)
    if not prompts:
        raise invalid(["body", "file"], "the file holds no prompts")
    return prompts


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or 'line'}: {err['msg']}"


def read_prompts(
    ctx: ServiceContext, principal: Principal, file_id: str
) -> list[tuple[str, str | None]]:
    with session_scope(ctx.sessions) as session:
        row = files_db.get_file(session, file_id, project_id=principal.project_id)
        if row is None:
            raise not_found("file", file_id)
        path = Path(row.path)
    return [(p.text, p.reference) for p in parse_jsonl(path.read_bytes())]
