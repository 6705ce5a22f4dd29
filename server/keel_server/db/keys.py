"""Projects, API keys (stored as sha256 hashes) and uploaded files."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keel_server.db.base import new_id, utcnow
from keel_server.db.models import ApiKey, File, Project


def get_or_create_project(session: Session, name: str) -> Project:
    row = session.execute(select(Project).where(Project.name == name)).scalar_one_or_none()
    if row is not None:
        return row
    try:
        with session.begin_nested():  # a concurrent creator may win the unique name
            row = Project(id=new_id("proj"), name=name)
            session.add(row)
    except IntegrityError:
        return session.execute(select(Project).where(Project.name == name)).scalar_one()
    return row


def get_project(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


def insert_api_key(
    session: Session,
    project_id: str,
    *,
    key_hash: str,
    prefix: str,
    name: str | None,
    parent_key_id: str | None = None,
) -> ApiKey:
    row = ApiKey(
        id=new_id("key"),
        project_id=project_id,
        key_hash=key_hash,
        prefix=prefix,
        name=name,
        parent_key_id=parent_key_id,
    )
    session.add(row)
    session.flush()
    return row


def find_active_key(session: Session, key_hash: str) -> ApiKey | None:
    stmt = select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    return session.execute(stmt).scalar_one_or_none()


def list_keys(session: Session, project_id: str) -> list[ApiKey]:
    stmt = select(ApiKey).where(ApiKey.project_id == project_id).order_by(ApiKey.id)
    return list(session.execute(stmt).scalars())


def get_key(session: Session, key_id: str) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def revoke_key(session: Session, key_id: str) -> list[str]:
    """Revoke the key and every key minted from it, directly or not; returns the ids this
    revoked now (a key revoked before keeps its time, its descendants are still revoked)."""
    now = utcnow()
    family, frontier = [key_id], [key_id]
    while frontier:
        children = select(ApiKey.id).where(ApiKey.parent_key_id.in_(frontier))
        frontier = [c for c in session.execute(children).scalars() if c not in family]
        family += frontier
    stmt = (
        update(ApiKey)
        .where(ApiKey.id.in_(family), ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(ApiKey.id)
    )
    return list(session.execute(stmt).scalars())


def insert_file(
    session: Session,
    project_id: str,
    *,
    file_id: str,
    filename: str,
    path: str,
    num_prompts: int,
    size_bytes: int,
) -> File:
    row = File(
        id=file_id,
        project_id=project_id,
        filename=filename,
        path=path,
        num_prompts=num_prompts,
        size_bytes=size_bytes,
    )
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, file_id: str, *, project_id: str) -> File | None:
    stmt = select(File).where(File.id == file_id, File.project_id == project_id)
    return session.execute(stmt).scalar_one_or_none()


def file_bytes(session: Session, project_id: str) -> int:
    """Bytes of every file the project has uploaded and not deleted."""
    stmt = select(func.coalesce(func.sum(File.size_bytes), 0)).where(File.project_id == project_id)
    return int(session.execute(stmt).scalar_one())


def delete_file(session: Session, file_id: str, *, project_id: str) -> bool:
    stmt = delete(File).where(File.id == file_id, File.project_id == project_id)
    return session.execute(stmt).rowcount == 1
