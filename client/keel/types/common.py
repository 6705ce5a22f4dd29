"""Base models shared by every wire type.

Requests are strict (`extra="forbid"`: an unknown field is a 422 naming it); responses are lenient
(`extra="ignore"`) so an older SDK keeps working when the server adds fields.

The scalar types of request fields live here too, so every request model means the same by a
number or a text: `Float` and `Int` take a JSON number only (no `true`, no `"1.0"`), a `Float` is
finite (no NaN or Infinity), and a `Text` holds no NUL character (PostgreSQL text cannot store
one). Every `Int` field states its own documented upper bound, at most `MAX_INT` (the database's
32-bit integer columns); a test walks the request models to keep it so.
"""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict

T = TypeVar("T")

MAX_INT = 2**31 - 1  # the largest value of a database INTEGER column (and of a cursor part)

Float = Annotated[float, Strict(), AllowInfNan(False)]
Int = Annotated[int, Strict()]
Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrozenConfig(BaseModel):
    """A part of a run's configuration: strict like a request, and frozen (a run's settings do not
    change under it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
