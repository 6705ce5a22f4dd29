"""Page sizes and the integer cursors of paginated lists (and of SSE's `Last-Event-ID`).

A cursor is what an endpoint returned before: ASCII digits, dot-separated for rollouts, each part
a database integer. Anything else is a 422 here, before it reaches SQL (`'²'.isdigit()` is true
in Python, and an integer past 2^31 overflows PostgreSQL's INTEGER columns).
"""

from __future__ import annotations

import re

from keel.types.common import MAX_INT
from keel_server.services.context import ServiceContext
from keel_server.services.errors import invalid

_DIGITS = re.compile(r"[0-9]{1,10}")


def page_limit(ctx: ServiceContext, limit: int | None) -> int:
    if limit is None:
        return ctx.settings.page_size_default
    if not 1 <= limit <= ctx.settings.page_size_max:
        raise invalid(["query", "limit"], f"must be between 1 and {ctx.settings.page_size_max}")
    return limit


def int_cursor(cursor: str, *, parts: int = 1, loc: list[str | int] | None = None) -> list[int]:
    """The `parts` integers of `cursor` (e.g. "3.0.1"), or a 422 at `loc`."""
    pieces = cursor.split(".")
    if len(pieces) != parts or not all(_DIGITS.fullmatch(p) for p in pieces):
        raise invalid(loc or ["query", "cursor"], "not a cursor returned by this endpoint")
    values = [int(p) for p in pieces]
    if max(values) > MAX_INT:
        raise invalid(loc or ["query", "cursor"], "not a cursor returned by this endpoint")
    return values
