"""The one service exception. The API turns it into the JSON envelope `{code, detail, errors?,
state?}` with the HTTP status of its code (`keel.types.errors.STATUS_OF_CODE`)."""

from __future__ import annotations

from typing import Any

from keel.types.errors import STATUS_OF_CODE, ErrorCode
from keel_server.db.transient import is_transient


class ServiceError(Exception):
    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        state: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.code, self.detail, self.errors, self.state = code, detail, errors, state
        self.retry_after_s = retry_after_s  # sent as `Retry-After` (a 429)

    @property
    def status(self) -> int:
        return STATUS_OF_CODE[self.code]


def not_found(kind: str, id_: str) -> ServiceError:
    return ServiceError("not_found", f"{kind} {id_!r} does not exist")


def invalid(loc: list[str | int], msg: str) -> ServiceError:
    """A 422 naming the offending field."""
    where = ".".join(str(part) for part in loc)
    return ServiceError(
        "validation_error",
        f"{where}: {msg}",
        errors=[{"loc": loc, "msg": msg, "type": "value_error"}],
    )


def is_database_blip(exc: BaseException) -> bool:
    """Whether a request failed on a dropped or unanswering database (answered 503, retry),
    for the API layer, which does not import the database package (`db.transient`)."""
    return is_transient(exc)
