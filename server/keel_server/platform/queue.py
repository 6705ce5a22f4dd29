"""The Celery producer side: broker configuration shared with the worker, and the enqueue of
`keel.run_job` by name (the API never imports worker code). Messages carry the job id only and
always expire."""

from __future__ import annotations

from typing import Any

from celery import Celery

from keel_server.platform.settings import Settings

RUN_JOB_TASK = "keel.run_job"
# A worker of another machine joins the rank group of a running job (docs/how-to/distributed.md).
JOIN_JOB_TASK = "keel.join_job"


REDIS_SOCKET_TIMEOUTS = {"socket_connect_timeout": 10, "socket_timeout": 30}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Broker settings for both producer and worker (`Celery(...).conf.update(**this)`)."""
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.job_queue,
        "broker_connection_retry_on_startup": True,
    }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Every broker wait is bounded: a Redis that stops answering fails a publish or a poll
        # (retried by Celery's own policies) instead of blocking a request or a worker forever.
        conf["broker_transport_options"] = dict(REDIS_SOCKET_TIMEOUTS)
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_dir
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(folder / "processed"),
            # kombu keeps its exchange tables in `./control` unless told: keep them with the queue.
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": settings.broker_polling_interval_s,
        }
    return conf


def make_producer(settings: Settings) -> Celery:
    app = Celery("keel-producer")
    app.conf.update(**celery_config(settings))
    return app


def enqueue_run_job(app: Celery, settings: Settings, job_id: str) -> str:
    """Send `keel.run_job(job_id)`; returns the Celery task id."""
    result = app.send_task(
        RUN_JOB_TASK,
        args=[job_id],
        queue=settings.job_queue,
        expires=settings.job_task_expires_s,
    )
    return result.id


def enqueue_join_job(app: Celery, settings: Settings, job_id: str) -> str:
    """Ask one more worker of the queue to join `job_id`'s rank group; the message is useless
    once the rendezvous has timed out, so it expires then."""
    result = app.send_task(
        JOIN_JOB_TASK,
        args=[job_id],
        queue=settings.job_queue,
        expires=settings.rendezvous_timeout_s,
    )
    return result.id


def broker_reachable(app: Celery, *, timeout_s: float = 2.0) -> bool:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
        return True
    except Exception:
        return False


def queue_depth(app: Celery, queue: str, *, timeout_s: float = 2.0) -> int | None:
    """Messages waiting in `queue` (not yet taken by a worker), or None when the broker does not
    answer. A queue nobody has declared yet holds nothing."""
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
            try:
                return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
            except conn.channel_errors:
                return 0
    except Exception:
        return None
