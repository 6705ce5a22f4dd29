"""`keel up`: the whole service on one machine with no other servers (architecture.md §7).

SQLite, the Celery `filesystem://` broker and the artifacts all live under `Settings.home`
(`.keel/`). The API runs in this process (uvicorn); one Celery worker runs as a subprocess in the
same process group, so Ctrl-C or a signal to the group stops both. Stopping keel stops the job
the worker was running: its lease goes stale and the next `keel up` resumes it from its latest
checkpoint. The admin key
comes from `KEEL_ADMIN_KEY`, else from `<home>/admin_key`, created on first start.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from keel_server.migrate import upgrade
from keel_server.settings import Settings
from keel_server.webhook_targets import LOOPBACK

ADMIN_KEY_FILE = "admin_key"
WORKER_STOP_TIMEOUT_S = 10.0


def ensure_admin_key(home: Path) -> str:
    """The embedded admin key, generated once and kept readable by the owner only."""
    path = home / ADMIN_KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = f"keel_admin_{secrets.token_urlsafe(24)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def embedded_settings(home: Path | None = None, **overrides: object) -> Settings:
    """Settings of the embedded deployment: everything under `home` unless the environment
    already names other URLs. The admin key is filled from `<home>/admin_key` when unset."""
    settings = Settings(**({"home": home} if home is not None else {}), **overrides)
    if "webhook_allow" not in settings.model_fields_set:
        # One machine: the reward service is usually a local process.
        settings = settings.model_copy(update={"webhook_allow": LOOPBACK})
    if not settings.admin_key:
        settings = settings.model_copy(update={"admin_key": ensure_admin_key(settings.home)})
    return settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The KEEL_* environment that makes a child process build the same Settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"KEEL_{name.upper()}"] = str(value)
    return env


@dataclass
class WorkerProcess:
    """The embedded Celery worker subprocess."""

    process: subprocess.Popen

    @classmethod
    def start(cls, settings: Settings, *, log_path: Path | None = None) -> WorkerProcess:
        cmd = [sys.executable, "-m", "keel_server.cli", "worker", "--loglevel", "info"]
        out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - owned by the child
        stderr = subprocess.STDOUT if out else None
        process = subprocess.Popen(cmd, env=settings_env(settings), stdout=out, stderr=stderr)
        return cls(process)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        # SIGQUIT is Celery's cold shutdown: a warm one would wait for the running job to end.
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def up(settings: Settings, *, host: str, port: int) -> None:
    """Migrate, start the worker, serve the API until interrupted, then stop the worker."""
    import uvicorn

    from keel_server.api.app import create_app

    # Everything keel up and its worker create (state, broker messages, artifacts, logs) is
    # readable by this user only; the worker inherits the umask.
    os.umask(0o077)
    upgrade(settings.database_url)
    Path(settings.home).mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess.start(settings, log_path=Path(settings.home) / "worker.log")
    url = f"http://{host}:{port}"
    print(f"keel is up at {url}  (docs: {url}/docs)", flush=True)
    print(f"admin key: {settings.admin_key}", flush=True)
    print(f"state: {Path(settings.home).resolve()}  worker log: worker.log", flush=True)
    # uvicorn re-raises a captured SIGTERM after its graceful shutdown; with the default handler
    # that would kill this process before `finally` stops the worker, leaving it orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    finally:
        worker.stop()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
