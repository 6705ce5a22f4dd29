"""The docs tests' fixtures: the site's generated pages, and the service the pages' code talks to.

`generated`: the site's generated pages, built once per session from this checkout.

`keel_service`: the embedded service a reader starts with `keel up`, once per module: a real
`keel up` subprocess (the API and one Celery worker, SQLite and the filesystem broker in a fresh
home) on a free port, with `KEEL_BASE_URL` and `KEEL_API_KEY` (its admin key) set for the module,
so `keel.Client()` in a page's code reaches it exactly as it reaches the reader's. The home's
model cache is the repository's `.keel/models`, as in tests/e2e/test_demo.py, so SmolLM2's GGUF
is converted once for the docs, the demo and its test together.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class KeelService:
    base_url: str
    admin_key: str
    home: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _start(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(TOKENIZERS_PARALLELISM="false", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "keel", "up", "--port", str(port), "--home", str(home)]
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home.parent,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (keel up then stops its worker), SIGKILL to the group if anything lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="session")
def generated():
    """The site's generated pages, built once for the session from this checkout."""
    from docsgen.pages import generate

    return generate()


@pytest.fixture(scope="module")
def keel_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeelService]:
    base = tmp_path_factory.mktemp("keel-up")
    home = base / "home"
    home.mkdir()
    models = REPO / ".keel" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(models, target_is_directory=True)
    port, log = _free_port(), base / "keel-up.log"
    url = f"http://127.0.0.1:{port}"
    process = _start(home, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _live(url):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, f"keel up did not answer in {START_TIMEOUT_S} s"
            time.sleep(0.2)
        service = KeelService(url, (home / "admin_key").read_text().strip(), home, log)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("KEEL_BASE_URL", service.base_url)
            env.setenv("KEEL_API_KEY", service.admin_key)
            yield service
    finally:
        _stop(process)
        # Checkpoints of SmolLM2 jobs are gigabytes; the shared model cache is only linked.
        (home / "models").unlink(missing_ok=True)
        shutil.rmtree(home, ignore_errors=True)
