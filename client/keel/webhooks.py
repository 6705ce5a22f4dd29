"""Webhook signing for the `webhook` reward source (docs/architecture.md §6). It is the SDK's
because reward services, which receive the deliveries, install the SDK and import `verify` from
here; the worker signs its deliveries with the same module (`keel_worker.jobrunner.webhook`).

The signature is HMAC-SHA256 with the job's webhook secret over `f"{timestamp}.".encode() + body`
(timestamp = integer Unix seconds, sent in `X-Keel-Timestamp`); `X-Keel-Signature` is
`v1=<hex digest>`. A receiver recomputes it over the raw body, compares in constant time and
rejects timestamps older than its tolerance (replay protection). Standard library only (an
import contract keeps it so): no web framework or HTTP client.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-Keel-Timestamp"
SIGNATURE_HEADER = "X-Keel-Signature"
JOB_HEADER = "X-Keel-Job"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signed_headers(secret: str, body: bytes, *, job_id: str, timestamp: int | None = None) -> dict:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, ts, body),
        JOB_HEADER: job_id,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """True when the headers carry a valid, fresh signature of `body` (header names any case)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(lower[TIMESTAMP_HEADER.lower()])
        given = lower[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), given)
