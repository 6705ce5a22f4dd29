"""The demo's keel: `keel up` started as a subprocess on a free port, waited for, and stopped in
the order the demo needs (`scripts/demo.py` owns the choreography around it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from keel import Client, KeelError

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def choose_port(preferred: int) -> int:
    """`preferred` when it is free, else a free port chosen by the OS (and say so)."""
    with socket.socket() as sock:
        # As uvicorn does: a port left in TIME_WAIT by the previous run counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            pass
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    print(f"port {preferred} is taken; using {port} instead")
    return port


class KeelService:
    """`keel up` as a subprocess in its own session, so Ctrl-C reaches only this script and the
    shutdown order stays ours: cancel the job through the API first, then stop the service."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = home / "demo-keel-up.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        """Start, wait until the API answers; return the admin key."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads
        # fight the threads doing the work (measured here: forward+backward 39 s -> 9 s).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        cmd = [
            sys.executable,
            "-m",
            "keel",
            "up",
            "--port",
            str(self.port),
            "--home",
            str(self.home),
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_live()
        return (self.home / "admin_key").read_text().strip()

    def _wait_live(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with Client(base_url=self.url, api_key="-", timeout_s=2.0, max_retries=0) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"`keel up` exited:\n{self.log_tail()}")
                try:
                    probe.health.live()
                    return
                except KeelError:
                    time.sleep(0.5)
        raise RuntimeError(f"`keel up` did not answer in {START_TIMEOUT_S:.0f} s")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGINT, as Ctrl-C in a terminal running `keel up`: uvicorn shuts down, then `keel up`
        stops its worker. Whatever is left of its process group after that is killed.

        Another Ctrl-C meanwhile is ignored: killing `keel up` early would orphan the worker."""
        if self.process is None:
            return
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._kill_group()
                    self.process.wait()
            self._kill_group()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _kill_group(self) -> None:
        # `keel up` leads its own session (start_new_session), so this group is ours alone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
