"""Webhook signing and delivery for the `webhook` reward source (architecture.md §6).

The signature is HMAC-SHA256 with the job's webhook secret over `f"{timestamp}.".encode() + body`
(timestamp = integer Unix seconds, sent in `X-Keel-Timestamp`); `X-Keel-Signature` is
`v1=<hex digest>`. A receiver recomputes it over the raw body, compares in constant time and
rejects timestamps older than its tolerance (replay protection). No web framework is imported:
the worker delivers with httpx.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping

import httpx

from keel.types.rewards import WebhookPayload, WebhookReply, WebhookRollout

TIMESTAMP_HEADER = "X-Keel-Timestamp"
SIGNATURE_HEADER = "X-Keel-Signature"
JOB_HEADER = "X-Keel-Job"
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


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


def payload_for(job_id: str, step: int, rollouts: Iterable) -> WebhookPayload:
    """The delivery of one step: `rollouts` are `keel_server.db.models.Rollout` rows."""
    items = [
        WebhookRollout(
            id=r.id, step=r.step, group_index=r.group_index, sample_index=r.sample_index,
            prompt=r.prompt, reference=r.reference, completion=r.completion,
            token_count=r.token_count, deadline_at=r.deadline_at,
        )
        for r in rollouts
    ]  # fmt: skip
    return WebhookPayload(job_id=job_id, step=step, rollouts=items)


def encode_payload(payload: WebhookPayload) -> bytes:
    return json.dumps(payload.model_dump(mode="json"), separators=(",", ":")).encode()


class WebhookDeliveryError(RuntimeError):
    """Every attempt failed; the rollouts stay awaiting and expire at their deadline."""


def deliver(
    url: str,
    secret: str,
    payload: WebhookPayload,
    *,
    timeout_s: float,
    max_attempts: int,
    backoff_s: float,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> WebhookReply:
    """POST the signed payload, retrying connection errors and 408/409/429/5xx with
    exponential backoff (re-signed each attempt so the timestamp stays fresh). Returns the
    receiver's inline rewards (possibly none: it will post them later)."""
    body = encode_payload(payload)
    owned = client is None
    http = client or httpx.Client(timeout=timeout_s)
    try:
        last_error = "no attempt made"
        for attempt in range(max_attempts):
            if attempt:
                sleep(backoff_s * 2 ** (attempt - 1))
            headers = signed_headers(secret, body, job_id=payload.job_id)
            try:
                response = http.post(url, content=body, headers=headers, timeout=timeout_s)
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUSES:
                last_error = f"HTTP {response.status_code}"
                continue
            if response.is_error:
                raise WebhookDeliveryError(f"{url} answered HTTP {response.status_code}")
            return _parse_reply(response)
        raise WebhookDeliveryError(f"{url}: {max_attempts} attempts failed ({last_error})")
    finally:
        if owned:
            http.close()


def _parse_reply(response: httpx.Response) -> WebhookReply:
    if not response.content.strip():
        return WebhookReply()
    return WebhookReply.model_validate_json(response.content)
