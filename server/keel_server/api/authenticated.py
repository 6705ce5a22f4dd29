"""What an authenticated route does before it reads a byte of its body.

FastAPI reads and parses a body before it solves dependencies, so an authentication dependency
alone would let an anonymous caller make the API buffer and parse a body (and answer 422 instead
of 401). `AuthenticatedRoute` authenticates first, from the headers only, and hands the route a
`receive` that counts body bytes and stops at the route's limit with a 413 (a caller over its
project's request rate gets its 429 before any body is read, too): a declared
`Content-Length` over the limit is refused before anything is read, a chunked body as soon as it
passes the limit. Routes with small bodies (rewards, keys) get `Settings.max_small_body_bytes`,
uploads (`UploadRoute`: jobs with inline datasets, prompt batches, files) `Settings.max_body_bytes`.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from keel_server.platform.settings import Settings
from keel_server.services import auth


class AuthenticatedRoute(APIRoute):
    """A route whose caller is authenticated before its body is read (`request.state.principal`)."""

    @staticmethod
    def body_limit(settings: Settings) -> int:
        return settings.max_small_body_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.body_limit(scope["app"].state.ctx.settings)
        await super().handle(scope, _limited(scope, receive, limit), send)

    def get_route_handler(self):
        read_body_and_run = super().get_route_handler()

        async def authenticate_first(request: Request):
            token = bearer_token(request.headers.get("authorization"))
            ctx = request.app.state.ctx
            # A reward token already verified needs no query, so no thread hop either.
            principal = auth.known_reward_token(ctx, token)
            if principal is None:
                principal = await run_in_threadpool(auth.authenticate, ctx, token)
            await request.app.state.rate_limiter.check(principal)
            request.state.principal = principal
            return await read_body_and_run(request)

        return authenticate_first


class UploadRoute(AuthenticatedRoute):
    """An authenticated route that accepts large bodies (datasets, prompt batches, files)."""

    @staticmethod
    def body_limit(settings: Settings) -> int:
        return settings.max_body_bytes


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _limited(scope: Scope, receive: Receive, limit: int) -> Receive:
    declared = dict(scope.get("headers") or []).get(b"content-length", b"")
    too_large = HTTPException(413, f"request body exceeds the limit of {limit} bytes")
    seen = 0

    async def receive_within_limit() -> Message:
        nonlocal seen
        # An HTTPException raised while FastAPI reads the body reaches the error handlers as is
        # (any other exception would become a 400).
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large
        return message

    return receive_within_limit
