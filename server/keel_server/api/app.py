"""The FastAPI application factory: REST under `/v1`, OpenAPI at `/docs`, health also at
`/health/*` for probes. The app holds one ServiceContext built from the given Settings."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from keel_server.api import errors
from keel_server.api.routes import (
    checkpoints,
    files,
    health,
    jobs,
    keys,
    metrics,
    prompts,
    rewards,
    rollouts,
)
from keel_server.services.context import ServiceContext
from keel_server.services.quotas import RateLimiter
from keel_server.settings import Settings, get_settings


def create_app(settings: Settings | None = None, *, ctx: ServiceContext | None = None) -> FastAPI:
    settings = settings or (ctx.settings if ctx else get_settings())
    ctx = ctx or ServiceContext.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        ctx.close()

    app = FastAPI(
        title="keel",
        version="0.1.0",
        summary="Self-hostable RL fine-tuning for LLMs with the MiniRL stabilization recipe",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    errors.install(app)
    for module in (jobs, prompts, files, rollouts, rewards, metrics, checkpoints, keys):
        app.include_router(module.router, prefix="/v1")
    app.include_router(health.router, prefix="/v1")
    app.include_router(health.router)
    return app
