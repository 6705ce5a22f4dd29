"""keel: the Python SDK of the keel RL fine-tuning service (`from keel import Client`).

The SDK depends on httpx and pydantic only; the wire types live in `keel.types`.
"""

from keel._archive import ChecksumMismatchError, UnsafeArchiveError
from keel._client import AsyncClient, Client
from keel._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    JobCancelledError,
    JobError,
    JobFailedError,
    KeelError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    WaitTimeoutError,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ChecksumMismatchError",
    "Client",
    "ConflictError",
    "InternalServerError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "KeelError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnprocessableEntityError",
    "UnsafeArchiveError",
    "WaitTimeoutError",
]
