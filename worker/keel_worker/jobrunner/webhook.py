"""Webhook delivery for the `webhook` reward source (docs/architecture.md §6): only workers deliver.

Each attempt resolves and checks the target (`keel_server.platform.webhook_targets`), then connects
to the checked address itself, naming the host in `Host` and TLS SNI, so DNS rebinding cannot send a
signed payload somewhere the check refused. Signing is `keel.webhooks` (the SDK's: receivers
import `verify`). Connection errors, 408, 409, 425, 429 and every 5xx are retried with
exponential backoff, re-signed each attempt so the timestamp stays fresh; any other 4xx, or a
target refused, fails at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

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

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429})


class WebhookDeliveryError(RuntimeError):
    """Every attempt failed, or the delivery was stopped or refused; the rollouts stay awaiting
    and expire at their deadline."""


class _AttemptFailed(Exception):
    """One attempt failed in a way worth retrying."""


@dataclass(frozen=True)
class DeliveryLimits:
    """The bounds of one step's delivery."""

    attempt_timeout_s: float  # one attempt's whole exchange, connect to the reply's last byte
    max_attempts: int  # the first included
    backoff_s: float  # before the second attempt, doubled for each further one ...
    backoff_max_s: float  # ... up to this
    max_reply_bytes: int  # a longer reply fails the delivery
    total_s: float  # the whole delivery, attempts and waits: the time left to the reward deadline

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1 = the second)."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s)


def _sleep_through(seconds: float) -> bool:
    time.sleep(seconds)
    return False


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
    limits: DeliveryLimits,
    wait: Callable[[float], bool] = _sleep_through,
    client: httpx.Client | None = None,
    clock: Callable[[], float] = time.monotonic,
    resolve: Resolver = system_resolver,
) -> WebhookReply:
    """POST the signed payload; returns the receiver's inline rewards (possibly none: it will
    post them later). `wait(seconds)` sleeps between attempts and answers whether the job asked
    to stop (`JobControl.wait_for_stop`). Raises WebhookDeliveryError when every attempt failed,
    the deadline passed, the job was stopped or the target is refused."""
    body = encode_payload(payload)
    ends_at = clock() + limits.total_s
    owned = client is None
    http = client or httpx.Client()
    try:
        last_error = "no attempt made"
        for attempt in range(limits.max_attempts):
            if attempt:
                delay = min(limits.backoff(attempt), max(ends_at - clock(), 0.0))
                if wait(delay):
                    raise WebhookDeliveryError(
                        f"stopped after {attempt} attempts: the job was paused or cancelled"
                    )
            left_s = ends_at - clock()
            if left_s <= 0:
                raise WebhookDeliveryError(
                    f"{url}: the reward deadline passed after {attempt} attempts ({last_error})"
                )
            try:
                target = resolve_target(url, allow, resolve=resolve)
            except WebhookTargetRefused as exc:
                raise WebhookDeliveryError(f"refused: {exc}") from exc
            headers = signed_headers(secret, body, job_id=payload.job_id)
            timeout_s = min(limits.attempt_timeout_s, left_s)
            try:
                status, content = _exchange(http, target, body, headers, timeout_s, limits)
            except _AttemptFailed as exc:
                last_error = str(exc)
                continue
            if status in RETRY_STATUSES or status >= 500:
                last_error = f"HTTP {status}"
                continue
            if status >= 400:
                raise WebhookDeliveryError(f"{url} answered HTTP {status}")
            return _parse_reply(content)
        raise WebhookDeliveryError(f"{url}: {limits.max_attempts} attempts failed ({last_error})")
    finally:
        if owned:
            http.close()


def _exchange(
    http: httpx.Client,
    target: Target,
    body: bytes,
    headers: dict,
    timeout_s: float,
    limits: DeliveryLimits,
) -> tuple[int, bytes]:
    """One POST and its whole reply, within `timeout_s` however slowly the receiver sends: at
    the bound a timer shuts the connection's socket (found through httpcore's `trace`
    extension), which ends any read in progress. Returns (status, body)."""
    sockets: list[socket.socket] = []

    def trace(event: str, info: dict) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            sockets.append(info["return_value"].get_extra_info("socket"))

    watchdog = threading.Timer(timeout_s, _shut, args=(sockets,))
    watchdog.daemon = True
    watchdog.start()
    try:
        with _post_pinned(http, target, body, headers, timeout_s, trace) as response:
            return response.status_code, _read_bounded(response, limits.max_reply_bytes)
    except httpx.HTTPError as exc:
        if watchdog.finished.is_set():
            raise _AttemptFailed(f"no complete reply within {timeout_s:g} s") from exc
        raise _AttemptFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        watchdog.cancel()


def _shut(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):  # closed already, or detached by TLS
            sock.shutdown(socket.SHUT_RDWR)


def _read_bounded(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise WebhookDeliveryError(_too_large(max_bytes, f"{declared} bytes declared"))
    content = bytearray()
    for chunk in response.iter_bytes():
        content += chunk
        if len(content) > max_bytes:
            raise WebhookDeliveryError(_too_large(max_bytes, "more sent"))
    return bytes(content)


def _too_large(max_bytes: int, what: str) -> str:
    return (
        f"the reply is over {max_bytes} bytes ({what}; KEEL_WEBHOOK_MAX_REPLY_BYTES): inline "
        "rewards are a short JSON list"
    )


def _post_pinned(
    http: httpx.Client,
    target: Target,
    body: bytes,
    headers: dict,
    timeout_s: float,
    trace: Callable[[str, dict], None],
):
    """The streamed POST to the checked address. `Connection: close`: each attempt opens its
    own connection, so the watchdog's socket is this exchange's."""
    pinned = httpx.URL(target.url).copy_with(host=target.address)
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    extensions: dict = {"trace": trace}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    return http.stream(
        "POST",
        pinned,
        content=body,
        headers={**headers, "Host": host_header, "Connection": "close"},
        timeout=timeout_s,
        extensions=extensions,
    )


def _parse_reply(content: bytes) -> WebhookReply:
    """Inline rewards from a 2xx body that is the documented JSON; any other body holds none."""
    if not content.strip():
        return WebhookReply()
    try:
        return WebhookReply.model_validate_json(content)
    except ValidationError:
        log.warning("webhook reply is not the inline-rewards JSON; taken as none: %.80r", content)
        return WebhookReply()
