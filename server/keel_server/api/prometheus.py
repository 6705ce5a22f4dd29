"""Prometheus exposition: `GET /metrics` (text format, outside the /v1 OpenAPI schema) and the
middleware that times every request by its route template (`/v1/jobs/{job_id}`, never the raw
path, so label cardinality stays bounded). What the process counts lives in
`keel_server.platform.telemetry`; what the database holds is read per scrape through
`services.monitoring` and exported by `_ServiceCollector`."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.routing import compile_path

from keel_server.api.deps import Ctx
from keel_server.platform.telemetry import Telemetry
from keel_server.services import monitoring
from keel_server.services.context import ServiceContext

router = APIRouter()
UNMATCHED = "unmatched"  # the route label of a request no route answered (404s of any path)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request, ctx: Ctx) -> Response:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    monitoring.check_scrape_access(ctx.settings, bearer)
    body = await run_in_threadpool(_exposition, ctx)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _exposition(ctx: ServiceContext) -> bytes:
    service = CollectorRegistry(auto_describe=False)
    service.register(_ServiceCollector(ctx))
    return ctx.telemetry.exposition() + generate_latest(service)


class _ServiceCollector:
    """Gauges read from the database and the broker at scrape time."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def collect(self):
        snap = monitoring.snapshot(self.ctx)
        jobs = GaugeMetricFamily("keel_jobs", "Jobs by status.", labels=["status"])
        for status, n in snap.jobs_by_status.items():
            jobs.add_metric([status], n)
        rollouts = GaugeMetricFamily("keel_rollouts", "Rollouts by status.", labels=["status"])
        for status, n in snap.rollouts_by_status.items():
            rollouts.add_metric([status], n)
        yield from (jobs, rollouts)
        if snap.queue_depth is not None:
            depth = GaugeMetricFamily(
                "keel_queue_depth", "Job messages waiting in the Celery queue.", labels=["queue"]
            )
            depth.add_metric([snap.queue], snap.queue_depth)
            yield depth
        yield from _running_job_gauges(snap)


def _running_job_gauges(snap: monitoring.Snapshot):
    labels = ["job_id", "project"]
    step = GaugeMetricFamily("keel_job_step", "Last completed step of a job.", labels=labels)
    families = {
        name: GaugeMetricFamily(exported, text, labels=labels)
        for name, (exported, text) in monitoring.WATCHED_METRICS.items()
    }
    for job in snap.running:
        step.add_metric([job.job_id, job.project], job.step)
        for name, value in job.metrics.items():
            # A non-finite value is stored as NULL; Prometheus carries it as NaN.
            families[name].add_metric(
                [job.job_id, job.project], float("nan") if value is None else value
            )
    yield step
    yield from families.values()


def route_templates(includes: Sequence[tuple[APIRouter, str]]) -> list[tuple[re.Pattern, str]]:
    """(path regex, template) of every route of the (router, prefix) pairs the app includes.
    Matched here rather than read from the ASGI scope, where FastAPI versions differ."""
    templates = []
    for router, prefix in includes:
        for route in router.routes:
            template = prefix + route.path
            templates.append((compile_path(template)[0], template))
    return templates


class RequestMetricsMiddleware:
    """Pure ASGI: counts and times each HTTP request, labelled by its route template."""

    def __init__(self, app, *, telemetry: Telemetry, templates: list[tuple[re.Pattern, str]]):
        self.app, self.telemetry, self.templates = app, telemetry, templates

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            template = next((t for regex, t in self.templates if regex.match(path)), UNMATCHED)
            elapsed = time.perf_counter() - start
            # A client picks the method and the path: both labels come from closed sets.
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.telemetry.observe_request(method, template, status, elapsed)
