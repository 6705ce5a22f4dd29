"""The worker's Celery application, configured from `Settings` (docs/architecture.md §5, §7).

The broker settings are the producer's own (`keel_server.platform.queue.celery_config`): Redis in
production, the `filesystem://` transport (a folder under `.keel/`, polled every 10 ms) in
embedded mode. Jobs are long, so a message is acknowledged only after its task returns
(`task_acks_late`), a pool process that dies hands its message back
(`task_reject_on_worker_lost`), and each worker process holds one message at a time
(`worker_prefetch_multiplier=1`, concurrency 1: one GPU per worker). Each job runs in a fresh
pool process (`worker_max_tasks_per_child=1`) so its GPU memory is returned when it ends.
Queues are named by device class (`Settings.job_queue`); start workers with `-Q <queue>`.

Run a worker with `keel-worker` (`python -m keel_worker`, `keel worker`) or
`celery -A keel_worker.celery_app worker`.
"""

from __future__ import annotations

from celery import Celery

from keel_server.platform.queue import RUN_JOB_TASK, celery_config
from keel_server.platform.settings import Settings, get_settings

__all__ = ["RUN_JOB_TASK", "app", "make_celery"]

# Redis re-delivers an unacknowledged message after this long. A duplicate finds the live lease
# and exits, and a dead worker's job is re-enqueued much sooner by the lease reaper
# (`keel_server.platform.leases`), so this only has to be long, not exact.
REDIS_VISIBILITY_TIMEOUT_S = 6 * 3600


def make_celery(settings: Settings) -> Celery:
    app = Celery("keel", include=["keel_worker.tasks"])
    conf = celery_config(settings)
    embedded = settings.broker_url.startswith("filesystem://")
    if settings.broker_url.startswith(("redis://", "rediss://")):
        conf["broker_transport_options"] = {
            **conf["broker_transport_options"],
            "visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S,
        }
    app.conf.update(
        **conf,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_max_tasks_per_child=1,
        # The filesystem transport has no fanout exchange, so remote control cannot work there.
        worker_enable_remote_control=not embedded,
    )
    app.keel_settings = settings
    return app


app = make_celery(get_settings())
