"""The FastAPI application factory: REST under `/v1`, OpenAPI at `/docs`, health also at
`/health/*` for probes, Prometheus at `/metrics`, the web dashboard at `/dashboard`. The app holds
one ServiceContext built from the given Settings and, while it serves, runs the context's lease
reaper: a job whose worker died is re-enqueued even when no worker is left to notice.

While it serves, SIGTERM and SIGINT also drain the open event streams (`services.streams`)
before the server's own handler runs: uvicorn waits for every open response before it exits, and
a stream of a running job would never end by itself."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from keel_server.api import errors, prometheus
from keel_server.api.routes import (
    checkpoints,
    dashboard,
    episodes,
    files,
    health,
    jobs,
    keys,
    metrics,
    openai,
    prompts,
    rewards,
    rollouts,
    tinker,
)
from keel_server.platform.settings import Settings, get_settings
from keel_server.services.context import ServiceContext
from keel_server.services.quotas import RateLimiter


def create_app(settings: Settings | None = None, *, ctx: ServiceContext | None = None) -> FastAPI:
    settings = settings or (ctx.settings if ctx else get_settings())
    ctx = ctx or ServiceContext.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        reaper = ctx.start_reaper()
        # Agent episodes' model calls are forwarded to the workers' policy servers over it.
        app.state.policy_client = httpx.AsyncClient()
        try:
            with _drain_streams_on_signals(ctx.streams.drain):
                yield
        finally:
            await app.state.policy_client.aclose()
            await app.state.rate_limiter.aclose()
            reaper.stop()
            ctx.close()

    app = FastAPI(
        title="keel",
        version="0.1.0",
        summary="Self-hostable RL fine-tuning for LLMs with the MiniRL stabilization recipe",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.rate_limiter = RateLimiter.from_settings(settings)
    errors.install(app)
    v1 = (
        jobs,
        prompts,
        files,
        rollouts,
        rewards,
        episodes,
        openai,
        metrics,
        checkpoints,
        keys,
        health,
    )
    includes = [(module.router, "/v1") for module in v1]
    includes += [(health.router, ""), (prometheus.router, ""), (dashboard.router, "")]
    includes += [(tinker.public, ""), (tinker.router, "")]  # the Tinker SDK's own paths
    for router, prefix in includes:
        app.include_router(router, prefix=prefix)
    app.state.method_table = errors.method_table(includes)
    app.openapi = _openapi_with_page_size(app, settings.page_size_max)
    # Outermost: it also counts the requests refused before a route runs (401, 413, 429).
    app.add_middleware(
        prometheus.RequestMetricsMiddleware,
        telemetry=ctx.telemetry,
        templates=prometheus.route_templates(includes),
    )
    return app


def _openapi_with_page_size(app: FastAPI, page_size_max: int) -> Callable[[], dict]:
    """The OpenAPI document with each paginated list's `limit` bounded by this server's page size
    (a setting, so not known where the routes are declared): the document promises no more than
    the server takes (services.paging)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                query = {
                    p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"
                }
                if "cursor" not in query or "limit" not in query:  # not a paginated list
                    continue
                limit = query["limit"]["schema"]
                for branch in limit.get("anyOf", [limit]):
                    if branch.get("type") == "integer":
                        branch["maximum"] = page_size_max
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


@contextlib.contextmanager
def _drain_streams_on_signals(drain: Callable[[], None]) -> Iterator[None]:
    """Chain `drain` in front of the SIGTERM / SIGINT handlers the server installed (uvicorn
    installs its own before the app starts). Signals belong to the main thread: elsewhere (a
    test client) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: object) -> None:
        drain()
        before = previous[signal.Signals(signum)]
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, before)
