"""HTTP plumbing shared by `Client` and `AsyncClient`: configuration, auth, retries, errors.

One request = one REST call. Retries cover the failures that are safe to repeat: connection
errors and timeouts, 408, 429 and 5xx, and a 409 only when the server marks it transient with
`Retry-After` (a reward conflict carries no such header: it is a real disagreement and must reach
the caller). A streamed body that breaks off mid-read raises `APIConnectionError` too. Every POST
carries an `Idempotency-Key` that stays the same across its retries, so a
retried create cannot make a second job. Waits grow exponentially with jitter and honor
`Retry-After` when the server sends one.

A server that refuses connections is restarting (or not up yet): the request never reached it,
so the SDK keeps trying for `reconnect_window_s` (30 s) from the first attempt, beyond
`max_retries`, and a reward posted during a restart of a few seconds is not lost.
`max_retries=0` still means no retry at all.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from keel._errors import APIConnectionError, APITimeoutError, error_from_response

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0
DEFAULT_RECONNECT_WINDOW_S = 30.0


@dataclass(frozen=True)
class ClientConfig:
    """What both clients need to build requests; resolved once at construction."""

    base_url: str
    api_key: str | None
    timeout_s: float
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    reconnect_window_s: float = DEFAULT_RECONNECT_WINDOW_S

    @classmethod
    def resolve(
        cls,
        base_url: str | None,
        api_key: str | None,
        timeout_s: float,
        max_retries: int,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        reconnect_window_s: float = DEFAULT_RECONNECT_WINDOW_S,
    ) -> ClientConfig:
        # The environment is only a fallback for arguments the caller left out.
        url = base_url or os.environ.get("KEEL_BASE_URL") or DEFAULT_BASE_URL
        key = api_key if api_key is not None else os.environ.get("KEEL_API_KEY")
        return cls(
            url.rstrip("/"),
            key,
            timeout_s,
            max_retries,
            backoff_base_s,
            backoff_max_s,
            reconnect_window_s,
        )

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "keel-python"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def should_retry(response: httpx.Response) -> bool:
    if response.status_code in RETRYABLE_STATUS:
        return True
    return response.status_code == 409 and "retry-after" in response.headers


def retry_after_s(response: httpx.Response | None) -> float | None:
    """Seconds the server asked us to wait, from `Retry-After` (seconds or an HTTP date)."""
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff_s(config: ClientConfig, attempt: int, response: httpx.Response | None) -> float:
    asked = retry_after_s(response)
    if asked is not None:
        return asked
    # Full jitter over an exponentially growing window: retries from many clients spread out.
    window = min(config.backoff_base_s * 2**attempt, config.backoff_max_s)
    return random.uniform(window / 2, window)


class Retries:
    """One request's retries: `max_retries` of them, and past that, a refused connection is
    retried until `reconnect_window_s` after the first attempt."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.attempt = 0
        self.started = time.monotonic()

    def wait_s(self, error: httpx.TransportError | None, response: httpx.Response | None) -> float:
        """Seconds to wait before the next attempt; raises `GiveUp` when there is none."""
        config = self.config
        if response is not None and not should_retry(response):
            raise GiveUp
        wait = backoff_s(config, min(self.attempt, 30), response)
        self.attempt += 1
        if self.attempt <= config.max_retries:
            return wait
        refused = isinstance(error, httpx.ConnectError)
        in_window = time.monotonic() - self.started + wait < config.reconnect_window_s
        if config.max_retries > 0 and refused and in_window:
            return wait
        raise GiveUp


class GiveUp(Exception):
    """No more attempts for this request."""


def build_request_kwargs(
    config: ClientConfig,
    method: str,
    path: str,
    params: Mapping[str, Any] | None,
    json: Any,
    files: Any,
    data: Any,
) -> dict[str, Any]:
    headers = config.headers()
    if method == "POST":
        headers["Idempotency-Key"] = f"keel-{uuid.uuid4()}"
    clean_params = {k: v for k, v in (params or {}).items() if v is not None}
    return {
        "method": method,
        "url": f"{config.base_url}{path}",
        "params": clean_params,
        "json": json,
        "files": files,
        "data": data,
        "headers": headers,
        "timeout": config.timeout_s,
    }


def connection_error(exc: httpx.TransportError) -> APIConnectionError:
    """The SDK's typed error for an httpx transport failure."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request to the keel server timed out: {exc}")
    return APIConnectionError(f"could not connect to the keel server: {exc}")


class SyncTransport:
    """Sends requests with retries on an injected or owned `httpx.Client`."""

    def __init__(self, config: ClientConfig, http_client: httpx.Client | None) -> None:
        self.config = config
        self._owns_client = http_client is None
        self.http = http_client or httpx.Client()

    def close(self) -> None:
        if self._owns_client:
            self.http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Any = None,
        data: Any = None,
    ) -> Any:
        kwargs = build_request_kwargs(self.config, method, path, params, json, files, data)
        response = self._send(kwargs, stream=False)
        return response.json() if response.content else None

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[httpx.Response]:
        kwargs = build_request_kwargs(self.config, method, path, params, None, None, None)
        kwargs["headers"].update(headers or {})
        response = self._send(kwargs, stream=True)
        try:
            yield response
        except httpx.TransportError as exc:  # the body broke off while being read
            raise connection_error(exc) from exc
        finally:
            response.close()

    def _send(self, kwargs: dict[str, Any], *, stream: bool) -> httpx.Response:
        retries = Retries(self.config)
        while True:
            try:
                request = self.http.build_request(**kwargs)
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                try:
                    wait = retries.wait_s(exc, None)
                except GiveUp:
                    raise connection_error(exc) from exc
                time.sleep(wait)
                continue
            if response.is_success:
                return response
            try:
                wait = retries.wait_s(None, response)
            except GiveUp:
                if stream:
                    response.read()
                    response.close()
                raise error_from_response(response) from None
            response.close()
            time.sleep(wait)


class AsyncTransport:
    """The `SyncTransport` twin on `httpx.AsyncClient`."""

    def __init__(self, config: ClientConfig, http_client: httpx.AsyncClient | None) -> None:
        self.config = config
        self._owns_client = http_client is None
        self.http = http_client or httpx.AsyncClient()

    async def close(self) -> None:
        if self._owns_client:
            await self.http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Any = None,
        data: Any = None,
    ) -> Any:
        kwargs = build_request_kwargs(self.config, method, path, params, json, files, data)
        response = await self._send(kwargs, stream=False)
        return response.json() if response.content else None

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        kwargs = build_request_kwargs(self.config, method, path, params, None, None, None)
        kwargs["headers"].update(headers or {})
        response = await self._send(kwargs, stream=True)
        try:
            yield response
        except httpx.TransportError as exc:  # the body broke off while being read
            raise connection_error(exc) from exc
        finally:
            await response.aclose()

    async def _send(self, kwargs: dict[str, Any], *, stream: bool) -> httpx.Response:
        retries = Retries(self.config)
        while True:
            try:
                request = self.http.build_request(**kwargs)
                response = await self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                try:
                    wait = retries.wait_s(exc, None)
                except GiveUp:
                    raise connection_error(exc) from exc
                await asyncio.sleep(wait)
                continue
            if response.is_success:
                return response
            try:
                wait = retries.wait_s(None, response)
            except GiveUp:
                if stream:
                    await response.aread()
                    await response.aclose()
                raise error_from_response(response) from None
            await response.aclose()
            await asyncio.sleep(wait)
