"""keel serving the Tinker surface in one process for the tests that drive it with the
unmodified `tinker` SDK: the API on a real port, and a worker thread that runs each Tinker model
(a job) the moment the API queues it, as a Celery worker would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from in_process import ADMIN_KEY

import keel
from bench.embedded import live_api
from keel_server.db import session_scope
from keel_server.db.jobs import set_requested
from keel_server.db.models import Job
from keel_server.platform.settings import Settings
from keel_worker.jobrunner.runner import RunOutcome, run_job, session_factory


@dataclass
class Workers:
    """Runs every queued Tinker job of the database on its own thread; keeps the outcomes."""

    settings: Settings
    outcomes: dict[str, list[RunOutcome]] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)
    _halt: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        watcher = threading.Thread(target=self._watch, name="tinker-workers", daemon=True)
        watcher.start()
        self._threads.append(watcher)

    def stop(self) -> None:
        """Cancel the models still resident (as `keel jobs cancel` would), then join them."""
        self._halt.set()
        with session_scope(session_factory(self.settings)) as session:
            for (job_id,) in session.query(Job.id).filter(Job.status == "running"):
                set_requested(session, job_id, "cancel", from_statuses=("running",))
        for thread in self._threads:
            thread.join(timeout=30)

    def _watch(self) -> None:
        factory = session_factory(self.settings)
        running: set[str] = set()
        while not self._halt.wait(0.05):
            with session_scope(factory) as session:
                queued = session.query(Job.id, Job.prompt_source).filter(Job.status == "queued")
                ids = [i for i, source in queued if (source or {}).get("type") == "tinker"]
            for job_id in ids:
                if job_id in running and self._alive(job_id):
                    continue
                running.add(job_id)
                thread = threading.Thread(target=self._run, args=(job_id,), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _alive(self, job_id: str) -> bool:
        return any(t.is_alive() and t.name == job_id for t in self._threads)

    def _run(self, job_id: str) -> None:
        threading.current_thread().name = job_id
        outcome = run_job(job_id, self.settings)
        self.outcomes.setdefault(job_id, []).append(outcome)


@dataclass(frozen=True)
class TinkerKeel:
    url: str  # keel's base URL; the tinker SDK's base_url is url + "/tinker"
    api_key: str  # a project key with the SDK's `tml-` prefix
    keel_key: str
    workers: Workers

    @property
    def base_url(self) -> str:
        return self.url + "/tinker"

    def keel(self) -> keel.Client:
        return keel.Client(base_url=self.url, api_key=self.keel_key)


@contextmanager
def tinker_keel(settings: Settings, project: str = "tinker") -> Iterator[TinkerKeel]:
    """The API of `settings` on a free port, a project key for the SDK, and the workers."""
    workers = Workers(settings)
    with live_api(settings) as url:
        with keel.Client(base_url=url, api_key=ADMIN_KEY) as admin:
            key = admin.keys.create(project=project, name="tinker").key
        workers.start()
        try:
            yield TinkerKeel(url=url, api_key="tml-" + key, keel_key=key, workers=workers)
        finally:
            workers.stop()
