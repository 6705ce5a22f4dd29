"""Liveness (the process answers) and readiness (the DB and the broker answer)."""

from __future__ import annotations

from keel.types.common import Health
from keel_server.db.session import ping
from keel_server.platform.queue import broker_reachable
from keel_server.services.context import ServiceContext


def live() -> Health:
    return Health(status="ok")


def ready(ctx: ServiceContext) -> Health:
    checks = {"database": "ok", "broker": "ok"}
    try:
        ping(ctx.sessions)
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    if not broker_reachable(ctx.producer):
        checks["broker"] = "error: unreachable"
    ok = all(v == "ok" for v in checks.values())
    return Health(status="ok" if ok else "unavailable", checks=checks)
