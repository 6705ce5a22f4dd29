"""`keel up`: the whole service on one machine with no other servers (docs/architecture.md §7).

SQLite, the Celery `filesystem://` broker and the artifacts all live under `Settings.home`
(`.keel/`). The API runs in this process (uvicorn); one Celery worker runs as its own program
(`python -m keel_worker`) in a subprocess of the same process group, so Ctrl-C or a signal to the
group stops both, and the worker dies with this process even when it is SIGKILLed
(`--parent-pid`, see `keel_worker.lifeline`). Stopping keel stops the job the worker was running;
the next `keel up` resumes it from its latest checkpoint.

One home, one `keel up`: `<home>/keel.pid` holds the pids and an exclusive `flock` that the worker
inherits, so the lock is free only when `keel up` and its worker are both gone. A second `keel up`
on a home whose lock is held refuses to start and names the live processes. The admin key
comes from `KEEL_ADMIN_KEY`, else from `<home>/admin_key`, created on first start.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from keel_server.migrate import upgrade
from keel_server.platform.settings import Settings
from keel_server.platform.webhook_targets import LOOPBACK

ADMIN_KEY_FILE = "admin_key"
PID_FILE = "keel.pid"
WORKER_STOP_TIMEOUT_S = 10.0


class HomeInUse(RuntimeError):
    """Another `keel up`, or the worker an earlier one left, still holds this home."""


@dataclass
class HomeLock:
    """The exclusive lock on `<home>/keel.pid`, whose text names the processes holding it."""

    fd: int

    @classmethod
    def acquire(cls, home: Path) -> HomeLock:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(home / PID_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise HomeInUse(
                f"keel is already running on {home.resolve()} ({holders}); stop those processes "
                "first (a worker left by a killed `keel up` included), then start again"
            ) from None
        return cls(fd)

    def record(self, **pids: int) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(pids).encode(), 0)

    def release(self) -> None:
        os.close(self.fd)  # the worker's inherited copy keeps the lock until it exits too


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
    def start(
        cls, settings: Settings, *, log_path: Path | None = None, lock: HomeLock | None = None
    ) -> WorkerProcess:
        """Start `python -m keel_worker`, bound to die with this process, holding `lock`."""
        cmd = [sys.executable, "-m", "keel_worker", "--loglevel", "info"]
        cmd += ["--parent-pid", str(os.getpid())]
        out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - owned by the child
        stderr = subprocess.STDOUT if out else None
        process = subprocess.Popen(
            cmd,
            env=settings_env(settings),
            stdout=out,
            stderr=stderr,
            pass_fds=(lock.fd,) if lock else (),
        )
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
    from keel_server.platform.storage import keep_files_private

    # Everything keel up and its worker create (state, broker messages, artifacts, logs) is
    # readable by this user only; the worker inherits the umask.
    keep_files_private()
    lock = HomeLock.acquire(Path(settings.home))
    upgrade(settings.database_url)
    worker = WorkerProcess.start(settings, log_path=Path(settings.home) / "worker.log", lock=lock)
    lock.record(keel_up=os.getpid(), worker=worker.process.pid)
    url = f"http://{host}:{port}"
    print(f"keel is up at {url}  (docs: {url}/docs)", flush=True)
    print(f"admin key: {settings.admin_key}", flush=True)
    print(f"state: {Path(settings.home).resolve()}  worker log: worker.log", flush=True)
    # uvicorn re-raises a captured SIGTERM after its graceful shutdown; with the default handler
    # that would kill this process before `finally` stops the worker, leaving it orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=settings.shutdown_grace_s,
        )
    finally:
        worker.stop()
        lock.release()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
