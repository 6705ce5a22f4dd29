"""Job creation's check of `config.distributed` against the live workers of the job queue
(`keel_server.platform.capacity`): a request no live worker can run is a 422 naming the limit.

With no live worker at all (none has started yet, as in `keel up` before its worker is ready, or
every worker is down) the job is accepted and waits in the queue like any other; the worker that
leases it checks its own advertisement and fails the job with the same message if it cannot run
it. A worker is live when it advertised within `Settings.lease_timeout_s`.
"""

from __future__ import annotations

from datetime import timedelta

from keel.types.training import TrainingConfig
from keel_server.db import session_scope, utcnow
from keel_server.db.workers import live_workers
from keel_server.platform.capacity import Advertised, needs_check, refusal
from keel_server.services.context import ServiceContext
from keel_server.services.errors import invalid


def check_distributed(ctx: ServiceContext, config: TrainingConfig) -> None:
    request = config.distributed
    if not needs_check(request):
        return
    seen_after = utcnow() - timedelta(seconds=ctx.settings.lease_timeout_s)
    with session_scope(ctx.sessions) as session:
        rows = live_workers(session, ctx.settings.job_queue, seen_after=seen_after)
        workers = [Advertised(r.id, r.max_processes, tuple(r.engines)) for r in rows]
    if not workers:
        return  # none live yet: the leasing worker checks (see the module docstring)
    refused = refusal(request, workers)
    if refused is not None:
        field, message = refused
        raise invalid(["body", "config", "distributed", field], message)
