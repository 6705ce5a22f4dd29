"""Job creation's check of `config.distributed` against the live workers of the job queue
(`keel_server.platform.capacity`): a request no live worker can run is a 422 naming the limit.

A job of several ranks is not an agent job nor a LoRA job (a 422 saying so). With no live worker
at all (none has started yet, as in `keel up` before its worker is ready, or
every worker is down) the job is accepted and waits in the queue like any other; the worker that
leases it checks its own advertisement and fails the job with the same message if it cannot run
it. A worker is live when it advertised within `Settings.lease_timeout_s`.
"""

from __future__ import annotations

from datetime import timedelta

from keel.types.agents import AgentPrompts
from keel.types.jobs import JobCreate
from keel_server.db import session_scope, utcnow
from keel_server.db.workers import live_workers
from keel_server.platform.capacity import Advertised, needs_check, refusal
from keel_server.services.context import ServiceContext
from keel_server.services.errors import invalid


def check_distributed(ctx: ServiceContext, req: JobCreate) -> None:
    request = req.config.distributed
    if request.world_size > 1:
        _check_supported(req)
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


def _check_supported(req: JobCreate) -> None:
    """What a job of several ranks cannot be yet (docs/how-to/distributed.md)."""
    where = ["body", "config", "distributed", "processes"]
    if isinstance(req.prompts, AgentPrompts):
        raise invalid(
            where,
            "an agent job runs in one process (its policy server answers episodes from one "
            "engine); leave distributed.processes and nodes at 1",
        )
    if req.config.lora is not None:
        raise invalid(
            where,
            "LoRA is not supported on more than one trainer process yet (FSDP2 would shard the "
            "frozen base with the adapters); run a LoRA job on one process",
        )
