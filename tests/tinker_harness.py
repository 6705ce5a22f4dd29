"""keel serving the Tinker surface for the tests that drive it with the unmodified `tinker`
SDK: the API on a real port, and a worker for each Tinker model (a job) the moment the API queues
it, as a Celery worker would: a thread of this process, or a process of its own (which a test may
SIGKILL; the model is then taken over by a new one, as a dead worker's job is)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import tinker
from in_process import ADMIN_KEY

import keel
from bench.embedded import live_api
from keel_server.db import session_scope
from keel_server.db.jobs import set_requested
from keel_server.db.models import Job
from keel_server.platform.leases import owner_is_dead
from keel_server.platform.settings import Settings
from keel_worker.jobrunner.runner import RunOutcome, run_job, session_factory

# A worker process: `run_job` of one job with the test's settings (passed as JSON).
_WORKER = """
import sys
from keel_server.platform.settings import Settings
from keel_worker.jobrunner.runner import run_job
print(run_job(sys.argv[1], Settings.model_validate_json(sys.argv[2])).status, flush=True)
"""


@dataclass
class Workers:
    """Runs every queued Tinker job of the database, and every running one whose worker
    process died, on a thread (or with `processes`, a process) of its own."""

    settings: Settings
    processes: bool = False
    outcomes: dict[str, list[RunOutcome]] = field(default_factory=dict)
    spawned: dict[str, subprocess.Popen] = field(default_factory=dict)  # the latest per job
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
        for process in self.spawned.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def _watch(self) -> None:
        factory = session_factory(self.settings)
        running: set[str] = set()
        while not self._halt.wait(0.05):
            with session_scope(factory) as session:
                rows = session.query(Job.id, Job.prompt_source, Job.status, Job.lease_owner)
                ids = [
                    job_id
                    for job_id, source, status, owner in rows
                    if (source or {}).get("type") == "tinker"
                    and (status == "queued" or (status == "running" and owner_is_dead(owner)))
                ]
            for job_id in ids:
                if job_id in running and self._alive(job_id):
                    continue
                running.add(job_id)
                if self.processes:
                    self._spawn(job_id)
                    continue
                thread = threading.Thread(target=self._run, args=(job_id,), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _alive(self, job_id: str) -> bool:
        if self.processes:
            return job_id in self.spawned and self.spawned[job_id].poll() is None
        return any(t.is_alive() and t.name == job_id for t in self._threads)

    def _spawn(self, job_id: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        settings = self.settings.model_dump_json()
        self.spawned[job_id] = subprocess.Popen(
            [sys.executable, "-c", _WORKER, job_id, settings], env=env, stdout=subprocess.PIPE
        )

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
    clients: list[tinker.ServiceClient] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url + "/tinker"

    def service(self) -> tinker.ServiceClient:
        """The SDK's client on this keel, closed (its session heartbeats stopped) at the end."""
        client = tinker.ServiceClient(base_url=self.base_url, api_key=self.api_key)
        self.clients.append(client)
        return client

    def keel(self) -> keel.Client:
        return keel.Client(base_url=self.url, api_key=self.keel_key)


@contextmanager
def tinker_keel(
    settings: Settings, project: str = "tinker", *, processes: bool = False
) -> Iterator[TinkerKeel]:
    """The API of `settings` on a free port, a project key for the SDK, and the workers."""
    workers = Workers(settings, processes=processes)
    with live_api(settings) as url:
        with keel.Client(base_url=url, api_key=ADMIN_KEY) as admin:
            key = admin.keys.create(project=project, name="tinker").key
        workers.start()
        tk = TinkerKeel(url=url, api_key="tml-" + key, keel_key=key, workers=workers)
        try:
            yield tk
        finally:
            for client in tk.clients:
                client.close("success")
            workers.stop()
