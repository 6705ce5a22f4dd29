"""A worker's advertisement in the `workers` table: the trainer processes it may start for one job
and the rollout engines it has (docs/how-to/distributed.md, "Which worker runs a job"). Job creation
checks a job's `distributed` request against the live rows; a daemon thread renews this worker's
row every heartbeat interval, and a clean shutdown removes it."""

from __future__ import annotations

import importlib.util
import logging
import socket
import threading

from keel_server.db import SessionFactory, session_scope
from keel_server.db.workers import advertise, withdraw
from keel_server.platform.settings import Settings

log = logging.getLogger(__name__)


def max_processes(settings: Settings) -> int:
    """`Settings.worker_max_processes`, else one per CUDA GPU, else 1."""
    if settings.worker_max_processes is not None:
        return settings.worker_max_processes
    import torch  # the worker has it loaded already (tasks preloads the training stack)

    return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1


def rollout_engines() -> tuple[str, ...]:
    return ("hf", "vllm") if importlib.util.find_spec("vllm") is not None else ("hf",)


class Advertiser:
    """Keeps `worker_id`'s row fresh while the worker runs."""

    def __init__(self, factory: SessionFactory, settings: Settings, worker_id: str) -> None:
        self.factory = factory
        self.settings = settings
        self.worker_id = worker_id
        self.max_processes = max_processes(settings)
        self.engines = rollout_engines()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="keel-advertise", daemon=True)

    def start(self) -> Advertiser:
        self.renew()
        self._thread.start()
        return self

    def renew(self) -> None:
        with session_scope(self.factory) as session:
            advertise(
                session,
                self.worker_id,
                host=socket.gethostname(),
                queue=self.settings.job_queue,
                max_processes=self.max_processes,
                engines=self.engines,
            )

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=5)
        try:
            with session_scope(self.factory) as session:
                withdraw(session, self.worker_id)
        except Exception:  # the DB may be gone at shutdown; the row goes stale on its own
            log.exception("worker %s: could not withdraw its advertisement", self.worker_id)

    def _loop(self) -> None:
        while not self._halt.wait(self.settings.heartbeat_interval_s):
            try:
                self.renew()
            except Exception:  # the DB briefly away: the next renewal retries
                log.exception("worker %s: advertisement not renewed", self.worker_id)
