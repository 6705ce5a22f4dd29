"""The policy server: the HTTP endpoint the API forwards a job's agent calls to.

Owns `PolicyServer` and `Call`. The HTTP side runs on daemon threads (`ThreadingHTTPServer`) and
computes nothing: a handler checks the shared secret and the body, queues a `Call` and waits for
its answer. The owner of the model (the job loop's main thread, the only thread that touches torch
or the tokenizer) drains the queue with `take`, which gathers calls that arrive together into one
batch, and answers each with `Call.answer`. Every call is answered exactly once: by the owner, by
its handler's reply timeout (504 `policy_timeout`) or by `close` (503 `policy_unavailable`),
whichever comes first; a later answer is refused.

Routes: `POST /episodes/{episode_id}/{kind}` (kind `chat/completions` or `completions`, a JSON
object body, header `X-Keel-Serve-Secret`) and `GET /health`. Errors use keel's envelope
`{code, detail}` (`keel.types.errors`).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from keel.types.errors import ErrorCode

log = logging.getLogger(__name__)

CallKind = Literal["chat/completions", "completions"]
SECRET_HEADER = "X-Keel-Serve-Secret"
DEFAULT_COALESCE_S = 0.005
DEFAULT_MAX_COALESCE_S = 0.05
DEFAULT_REPLY_TIMEOUT_S = 300.0
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
_CLOSE_FLUSH_S = 2.0  # how long close() lets handlers write the 503s it gave them
_EPISODES_PREFIX = "/episodes/"
_SHUTTING_DOWN = "the worker serving this job's policy is shutting down"

Reply = tuple[int, dict[str, Any]]


def error_body(code: ErrorCode, detail: str) -> dict[str, Any]:
    """keel's error envelope."""
    return {"code": code, "detail": detail}


@dataclass(eq=False)
class Call:
    """One harness call waiting for its answer (compared by identity)."""

    kind: CallKind
    episode_id: str
    body: dict[str, Any]
    received_at: float = field(default_factory=time.monotonic)  # time.monotonic() when queued
    _reply: Reply | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def answer(self, status: int, body: dict[str, Any]) -> bool:
        """Send `body` as JSON with HTTP `status`. False, and nothing sent, when the call was
        already answered (by an earlier answer, its reply timeout or `close`)."""
        if not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status}")
        with self._lock:
            if self._reply is not None:
                return False
            self._reply = (status, body)
        self._done.set()
        return True

    @property
    def answered(self) -> bool:
        return self._reply is not None

    def _wait(self, timeout_s: float) -> Reply:
        if not self._done.wait(timeout_s):
            # Loses to an answer that lands between the wait and this line, as it should.
            detail = f"the policy did not answer within {timeout_s:g} s"
            self.answer(504, error_body("policy_timeout", detail))
        assert self._reply is not None
        return self._reply


class PolicyServer:
    """The policy's HTTP endpoint on a daemon thread, and the queue its owner drains."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: str,
        *,
        coalesce_s: float = DEFAULT_COALESCE_S,
        max_coalesce_s: float = DEFAULT_MAX_COALESCE_S,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        """Bind `host:port` (port 0: an ephemeral port, see `url`) and start serving."""
        if not secret:
            raise ValueError("the policy server needs a non-empty secret")
        self.coalesce_s = coalesce_s
        self.max_coalesce_s = max_coalesce_s
        self.reply_timeout_s = reply_timeout_s
        self.max_body_bytes = max_body_bytes
        self._secret = secret.encode()
        self._changed = threading.Condition()
        self._queue: deque[Call] = deque()  # arrived, not taken (some may be answered already)
        self._unanswered: set[Call] = set()  # queued or taken, handler still waiting
        self._handlers_writing = 0  # handlers between queueing a call and writing its reply
        self._last_activity = 0.0  # time.monotonic() of the last arrival or reply written
        self._closed = False
        self._httpd = _HTTPServer((host, port), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="keel-policy-server",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        """The bound port (the one chosen for port 0)."""
        return self._httpd.server_address[1]

    @property
    def closed(self) -> bool:
        return self._closed

    def take(self, timeout_s: float, max_calls: int) -> list[Call]:
        """Block until a call is queued (or `timeout_s` passes, or the server closes: `[]`), let
        more calls join it while the server is busy (until `coalesce_s` has passed without a
        call arriving or a reply being written, at most `max_coalesce_s` after the oldest queued
        call), and return the queued calls, oldest first, up to `max_calls` (reached: at once).

        The window slides because concurrent calls do not arrive at once, and a call that misses
        a batch waits for the whole of it: 32 episodes answered together call again over 10 to
        30 ms on a loaded 2-core CPU, and the first of them arrive while the last replies are
        still being written (the handlers share one interpreter), sometimes with a gap of over
        5 ms; a reply written is a call likely to come."""
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self._drop_answered_head():
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return []
                self._changed.wait(remaining)
            gather_cap = self._queue[0].received_at + self.max_coalesce_s
            while len(self._queue) < max_calls and not self._closed:
                quiet_at = self._last_activity + self.coalesce_s
                remaining = min(quiet_at, gather_cap) - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            taken: list[Call] = []
            while self._queue and len(taken) < max_calls:
                call = self._queue.popleft()
                if not call.answered:  # a call whose handler timed out is dropped here
                    taken.append(call)
            return taken

    def close(self) -> None:
        """Answer every unanswered call (queued or taken) 503 and stop serving. Idempotent."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            unanswered = list(self._unanswered)
            self._queue.clear()
            self._changed.notify_all()
        for call in unanswered:
            call.answer(503, error_body("policy_unavailable", _SHUTTING_DOWN))
        with self._changed:
            self._changed.wait_for(lambda: self._handlers_writing == 0, timeout=_CLOSE_FLUSH_S)
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the handlers' side
    def _authorized(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self._secret)

    def _serve(self, call: Call, write: Callable[[Reply, bool], None]) -> None:
        """Queue `call`, wait for its reply and `write(reply, close_connection)` it; close()
        waits (briefly) for the writes of the replies it gave."""
        with self._changed:
            closed = self._closed
            if not closed:
                call.received_at = time.monotonic()  # under the lock: the queue stays in order
                self._last_activity = call.received_at
                self._queue.append(call)
                self._unanswered.add(call)
                self._handlers_writing += 1
                self._changed.notify_all()
        if closed:
            write((503, error_body("policy_unavailable", _SHUTTING_DOWN)), True)
            return
        try:
            reply = call._wait(self.reply_timeout_s)
            with self._changed:
                self._unanswered.discard(call)
            write(reply, self._closed)
        finally:
            with self._changed:
                self._handlers_writing -= 1
                self._last_activity = time.monotonic()
                self._changed.notify_all()

    def _drop_answered_head(self) -> bool:
        """Drop answered calls from the queue's head; True when a call is left queued."""
        while self._queue and self._queue[0].answered:
            self._queue.popleft()
        return bool(self._queue)


class _HTTPServer(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when dozens of episodes call at once, and a
    # dropped SYN costs the client a one-second retransmit.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, policy: PolicyServer) -> None:
        self.policy = policy
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: the API reuses its connections
    # Headers and body are separate writes; with Nagle the body can wait for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/health":
            self._send(200, {"ok": True})
        else:
            self._send(404, error_body("not_found", f"no route GET {self.path}"), close=True)

    def do_POST(self) -> None:
        policy = self.server.policy
        route = _route(self.path)
        if route is None:
            self._send(404, error_body("not_found", f"no route POST {self.path}"), close=True)
            return
        if not policy._authorized(self.headers.get(SECRET_HEADER)):
            detail = f"missing or wrong {SECRET_HEADER} header"
            self._send(401, error_body("unauthorized", detail), close=True)
            return
        body, problem = self._read_json_object(policy.max_body_bytes)
        if problem is not None:
            self._send(*problem, close=True)
            return
        episode_id, kind = route
        policy._serve(
            Call(kind, episode_id, body),
            lambda reply, close: self._send(*reply, close=close),
        )

    def _method_not_allowed(self) -> None:
        self._send(405, error_body("method_not_allowed", f"{self.command} is not served"), True)

    do_PUT = do_PATCH = do_DELETE = _method_not_allowed

    def _read_json_object(self, max_bytes: int) -> tuple[dict[str, Any], Reply | None]:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return {}, (400, error_body("bad_request", "the body needs a Content-Length"))
        if int(length) > max_bytes:
            detail = f"the body is over {max_bytes} bytes"
            return {}, (413, error_body("payload_too_large", detail))
        try:
            body = json.loads(self.rfile.read(int(length)))
        except (ValueError, UnicodeDecodeError) as exc:
            return {}, (400, error_body("bad_request", f"the body is not JSON: {exc}"))
        if not isinstance(body, dict):
            return {}, (400, error_body("bad_request", "the body must be a JSON object"))
        return body, None

    def _send(self, status: int, body: dict[str, Any], close: bool = False) -> None:
        try:
            data = json.dumps(body, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            log.error("policy server: unserializable reply (%s)", exc)
            status = 500
            data = json.dumps(error_body("internal_error", "the reply is not JSON")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("policy server: " + format, *args)


def _route(raw_path: str) -> tuple[str, CallKind] | None:
    """(episode id, kind) of `/episodes/{episode_id}/{kind}`, or None."""
    path = urlsplit(raw_path).path
    if not path.startswith(_EPISODES_PREFIX):
        return None
    episode_id, _, kind = path[len(_EPISODES_PREFIX) :].partition("/")
    if not episode_id or kind not in get_args(CallKind):
        return None
    return episode_id, kind  # type: ignore[return-value]  # kind is checked against CallKind
