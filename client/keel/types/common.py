"""Base models shared by every wire type.

Requests are strict (`extra="forbid"`: an unknown field is a 422 naming it); responses are lenient
(`extra="ignore"`) so an older SDK keeps working when the server adds fields.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Page(ResponseModel, Generic[T]):
    """One page of a cursor-paginated list; pass `next_cursor` as `cursor` to get the next."""

    data: list[T]
    next_cursor: str | None = None
    has_more: bool = False


class Health(ResponseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}
