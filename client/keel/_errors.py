"""The SDK's one exception hierarchy: every failure a caller can see is a `KeelError`.

HTTP errors are built from the server's JSON envelope `{code, detail, errors?, state?}` and
mapped to a subclass by status code, so callers catch `NotFoundError` rather than inspecting
numbers. All exceptions pickle (they carry plain data only) so they survive multiprocessing.
"""

from __future__ import annotations

from typing import Any

import httpx


class KeelError(Exception):
    """Base class of every error the SDK raises."""


class APIConnectionError(KeelError):
    """The server could not be reached (refused, reset, DNS) after all retries."""

    def __init__(self, message: str = "could not connect to the keel server") -> None:
        super().__init__(message)


class APITimeoutError(APIConnectionError):
    """The request timed out after all retries."""

    def __init__(self, message: str = "request to the keel server timed out") -> None:
        super().__init__(message)


class APIStatusError(KeelError):
    """The server answered with an error status; fields come from the error envelope."""

    def __init__(
        self,
        status_code: int,
        code: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        state: dict[str, Any] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {detail}")
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.errors = errors or []
        self.state = state  # the resource's current state on a 409, e.g. a rollout's
        self.body = body

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.status_code, self.code, self.detail, self.errors, self.state, self.body)
        return (type(self), args)


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: missing or invalid API key / reward token."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404: unknown id, or one that belongs to another project."""


class ConflictError(APIStatusError):
    """409: e.g. a different reward for an already rewarded rollout, or a wrong job state."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body is over the server's limit."""


class UnprocessableEntityError(APIStatusError):
    """422: validation failed; `errors` names the offending fields."""


class RateLimitError(APIStatusError):
    """429."""


class InternalServerError(APIStatusError):
    """5xx."""


class JobError(KeelError):
    """`jobs.wait()` saw the job end in a state other than `succeeded`."""

    def __init__(self, job: Any) -> None:
        status = getattr(job, "status", "?")
        error = getattr(job, "error", None)
        step = getattr(job, "error_step", None)
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"job {getattr(job, 'id', '?')} {status}{where}: {error or 'no error'}")
        self.job = job

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job,))


class JobFailedError(JobError):
    """The job failed in the worker; `job.error` and the step reached say why and where."""


class JobCancelledError(JobError):
    """The job was cancelled before it finished."""


class WaitTimeoutError(KeelError):
    """`jobs.wait()` gave up before the job reached a terminal state."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_from_response(response: httpx.Response) -> APIStatusError:
    """Build the typed error for an error response, tolerating bodies that are not the envelope
    (a proxy's HTML 502, an empty 413 from a load balancer)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    envelope = body if isinstance(body, dict) else {}
    code = str(envelope.get("code") or f"http_{response.status_code}")
    detail = envelope.get("detail")
    if not isinstance(detail, str):
        detail = str(detail) if detail is not None else (response.reason_phrase or "error")
    errors = envelope.get("errors") if isinstance(envelope.get("errors"), list) else None
    state = envelope.get("state") if isinstance(envelope.get("state"), dict) else None
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    return cls(response.status_code, code, detail, errors, state, body)
