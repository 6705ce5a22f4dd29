"""Webhook delivery for the `webhook` reward source (docs/architecture.md §6): only workers deliver.

Each attempt resolves and checks the target (`keel_server.platform.webhook_targets`), then connects
to the checked address itself, naming the host in `Host` and TLS SNI, so DNS rebinding cannot send a
signed payload somewhere the check refused. Signing is `keel.webhooks` (the SDK's: receivers
import `verify`). Connection errors, 408, 409, 425, 429 and every 5xx are retried with
exponential backoff, re-signed each attempt so the timestamp stays fresh; any other 4xx, or a
target refused, fails at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

import httpx

from keel.types.rewards import WebhookPayload, WebhookReply, WebhookRollout
from keel.webhooks import signed_headers
from keel_server.platform.webhook_targets import (
    Resolver,
    Target,
    WebhookAllow,
    WebhookTargetRefused,
    resolve_target,
    system_resolver,
)

RETRY_STATUSES = frozenset({408, 409, 425, 429})


class WebhookDeliveryError(RuntimeError):
    """Every attempt failed; the rollouts stay awaiting and expire at their deadline."""


def payload_for(job_id: str, step: int, rollouts: Iterable) -> WebhookPayload:
    """The delivery of one step: `rollouts` are `keel_server.db.models.Rollout` rows."""
    items = [
        WebhookRollout(
            id=r.id,
            step=r.step,
            group_index=r.group_index,
            sample_index=r.sample_index,
            prompt=r.prompt,
            reference=r.reference,
            completion=r.completion,
            token_count=r.token_count,
            deadline_at=r.deadline_at,
        )
        for r in rollouts
    ]
    return WebhookPayload(job_id=job_id, step=step, rollouts=items)


def encode_payload(payload: WebhookPayload) -> bytes:
    return json.dumps(payload.model_dump(mode="json"), separators=(",", ":")).encode()


def deliver(
    url: str,
    secret: str,
    payload: WebhookPayload,
    *,
    allow: WebhookAllow,
    timeout_s: float,
    max_attempts: int,
    backoff_s: float,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    resolve: Resolver = system_resolver,
) -> WebhookReply:
    """POST the signed payload; returns the receiver's inline rewards (possibly none: it will
    post them later). Raises WebhookDeliveryError when every attempt failed or the target is
    refused."""
    body = encode_payload(payload)
    owned = client is None
    http = client or httpx.Client(timeout=timeout_s)
    try:
        last_error = "no attempt made"
        for attempt in range(max_attempts):
            if attempt:
                sleep(backoff_s * 2 ** (attempt - 1))
            try:
                target = resolve_target(url, allow, resolve=resolve)
            except WebhookTargetRefused as exc:
                raise WebhookDeliveryError(f"refused: {exc}") from exc
            headers = signed_headers(secret, body, job_id=payload.job_id)
            try:
                response = _post_pinned(http, target, body, headers, timeout_s)
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUSES or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}"
                continue
            if response.is_error:
                raise WebhookDeliveryError(f"{url} answered HTTP {response.status_code}")
            return _parse_reply(response)
        raise WebhookDeliveryError(f"{url}: {max_attempts} attempts failed ({last_error})")
    finally:
        if owned:
            http.close()


def _post_pinned(
    http: httpx.Client, target: Target, body: bytes, headers: dict, timeout_s: float
) -> httpx.Response:
    pinned = httpx.URL(target.url).copy_with(host=target.address)
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return http.post(
        pinned,
        content=body,
        headers={**headers, "Host": host_header},
        timeout=timeout_s,
        extensions=extensions,
    )


def _parse_reply(response: httpx.Response) -> WebhookReply:
    if not response.content.strip():
        return WebhookReply()
    return WebhookReply.model_validate_json(response.content)
