"""Wire types of projects and API keys. A key's secret is shown once, at creation."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from keel.types.common import RequestModel, ResponseModel, Text


class ApiKeyCreate(RequestModel):
    project: Text | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Project name (admin only; created if new). Default: the caller's project.",
    )
    name: Text | None = Field(default=None, max_length=200)


class ApiKey(ResponseModel):
    id: str
    project_id: str
    name: str | None = None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    key: str
    project: str


class Project(ResponseModel):
    id: str
    name: str
    created_at: datetime


class Whoami(ResponseModel):
    project_id: str
    is_admin: bool
    job_id: str | None = Field(default=None, description="Set for a reward token.")
