"""One delivery of `keel.join_job(job_id)`: this worker's machine joins the rank group of a job
that another worker leased (docs/how-to/distributed.md, "Several machines").

The lease holder of a job of `nodes` > 1 machines hosts the job's c10d rendezvous, records its
address on the job (`jobs.rendezvous`) and sends `nodes` - 1 join messages to the job queue. A
worker that receives one starts its own launcher agent against that address with the job's
`processes` ranks (`jobrunner.group.RankGroup`, joining) and watches it like the lease holder
watches its own (a dead rank, a stall), until the group ends or the job stops running under
that lease. It never writes the job's state: the lease holder alone ends the job; ranks of this
machine write the job's progress only if rank 0 lands here, under the holder's owner id.

A join that cannot help (the job no longer runs, this worker advertises fewer processes than the
job asks for) returns at once; the rendezvous then misses a machine and the job fails when it
times out (`Settings.rendezvous_timeout_s`), saying so.
"""

from __future__ import annotations

import logging

from keel_server.db import session_scope, stored
from keel_server.db.jobs import get_job
from keel_server.platform.settings import Settings
from keel_worker.jobrunner.control import StopRun
from keel_worker.jobrunner.group import Following, RankGroup, own_refusal
from keel_worker.jobrunner.runner import session_factory

log = logging.getLogger(__name__)


def join_job(job_id: str, settings: Settings, *, rank_args: tuple[str, ...] = ()) -> str:
    """Join the job's group and run this machine's ranks to the group's end. Returns what
    happened: the group's end status on this machine | not_running | refused | ended."""
    factory = session_factory(settings)
    with session_scope(factory) as session:
        job = get_job(session, job_id)
        if job is None or job.status != "running" or not job.rendezvous or not job.lease_owner:
            log.info("job %s: nothing to join", job_id)
            return "not_running"
        request = stored.training_config(job).distributed
        endpoint, owner = job.rendezvous, job.lease_owner
    refused = own_refusal(request, settings)
    if refused is not None:
        log.warning("job %s: not joining: %s", job_id, refused)
        return "refused"
    control = Following(factory, job_id, owner, interval_s=settings.heartbeat_interval_s)
    group = RankGroup(job_id, request, settings, control, endpoint=endpoint, rank_args=rank_args)
    try:
        end = group.run()
    except StopRun:
        log.info(
            "job %s: no longer running under %s; this machine's ranks are ended", job_id, owner
        )
        return "ended"
    log.info("job %s: this machine's ranks ended: %s %s", job_id, end.status, end.error or "")
    return end.status
