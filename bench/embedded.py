"""The embedded service inside a benchmark's own process, as `keel up` and the SDK use it.

`embedded_service(home)` migrates a fresh SQLite database under `home`, starts the real API app
(`create_app`) behind an in-process HTTP client and yields the SDK on it; `run(job_id)` runs a
job with the worker's job loop (`run_job`), in this process, to its end state. `live_api(settings)`
serves the app on a real local port instead (uvicorn on a thread), for clients that need a URL:
the `openai` SDK of an agent harness. No Celery worker
takes the job from the broker: the caller runs it, so a benchmark decides which job runs when.
The research harness's guard cases (`research.guard_service`) run their jobs through it too: the
one thing `research` takes from `bench` (.importlinter).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keel
from keel_server.platform.settings import Settings
from keel_worker.jobrunner.runner import RunOutcome, run_job

ADMIN_KEY = "keel_admin_bench_0123456789abcdef"


@dataclass(frozen=True)
class EmbeddedService:
    sdk: keel.Client
    settings: Settings

    def run(self, job_id: str) -> RunOutcome:
        """Run the job in this process's worker loop; returns once its end state is written."""
        return run_job(job_id, self.settings)


@contextmanager
def embedded_service(
    home: Path, *, model_roots: tuple[Path, ...] = ()
) -> Iterator[EmbeddedService]:
    from fastapi.testclient import TestClient

    from keel_server.api.app import create_app
    from keel_server.migrate import upgrade

    url = f"sqlite:///{home}/keel.db"
    upgrade(url)
    settings = Settings(
        home=Path(home), database_url=url, admin_key=ADMIN_KEY, model_roots=model_roots
    )
    with TestClient(create_app(settings), base_url="http://testserver") as http:
        sdk = keel.Client(
            base_url="http://testserver", api_key=ADMIN_KEY, http_client=http, max_retries=0
        )
        yield EmbeddedService(sdk, settings)


@contextmanager
def live_api(settings: Settings, *, port: int | None = None) -> Iterator[str]:
    """Serve the API of `settings` on `port` (default a free one); yields its base URL."""
    import uvicorn

    from keel_server.api.app import create_app

    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
