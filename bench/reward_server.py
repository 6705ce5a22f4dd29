"""The server side of `bench.reward_ingest`: a real `keel server` process on a database of its own
(SQLite or a fresh PostgreSQL database), and the CPU that it, its database's backends and its
Redis use. Its per-project rate limit and active-job quota are raised far above the bench's load.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.proc_cpu import pid_cpu_s, tree_cpu_s

ADMIN_KEY = "keel_admin_bench_0123456789abcdef"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_CONNECTIONS_PER_SERVER = 32  # half the largest concurrency swept


class Server:
    """`keel migrate` then `keel server` on a database of its own, in a temporary home."""

    def __init__(
        self, db: str, home: Path, *, workers: int = 1, redis_url: str | None = None
    ) -> None:
        self.db, self.home, self.workers, self.redis_url = db, home, workers, redis_url
        self.database_url = self._database()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        self.env.update(
            KEEL_HOME=str(home),
            KEEL_ADMIN_KEY=ADMIN_KEY,
            KEEL_DATABASE_URL=self.database_url,
            KEEL_RATE_LIMIT_PER_S="1000000",
            KEEL_RATE_LIMIT_BURST="1000000",
            KEEL_MAX_ACTIVE_JOBS_PER_PROJECT="1000",
            # The compared servers are up together on one PostgreSQL (max_connections 100 by
            # default, shared with whatever else runs): each holds at most this many in all.
            KEEL_API_DATABASE_CONNECTIONS=str(DB_CONNECTIONS_PER_SERVER),
        )
        if redis_url:
            self.env["KEEL_BROKER_URL"] = redis_url  # the rate-limit buckets live there
        cli = [sys.executable, "-m", "keel"]
        try:
            subprocess.run([*cli, "migrate"], env=self.env, check=True, capture_output=True)
        except BaseException:
            self._drop_database()
            raise
        self.log = open(home / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        command = [*cli, "server", "--port", str(port), "--workers", str(workers)]
        self.process = subprocess.Popen(
            command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            self._wait_live()
        except BaseException:
            self.stop()
            raise

    def _database(self) -> str:
        if self.db == "sqlite":
            return f"sqlite:///{self.home / 'keel.db'}"
        import psycopg

        self.pg_name = f"keel_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.pg_name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.pg_name}"

    def _wait_live(self) -> None:
        deadline = time.monotonic() + 180  # a loaded 2-core machine starts it slowly
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.home / "server.log").read_text())
            try:
                if httpx.get(f"{self.url}/health/live", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("keel server did not come up")

    def cpu_s(self) -> float | None:
        """CPU seconds used so far by the server process and its children (uvicorn's workers),
        from /proc; None where there is none."""
        return tree_cpu_s(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
        self.log.close()
        self._drop_database()

    def _drop_database(self) -> None:
        if self.db == "postgres":
            import psycopg

            with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    def database_cpu_s(self) -> dict[int, float] | None:
        """CPU seconds so far of each PostgreSQL backend connected to this server's database
        (local PostgreSQL only: None where /proc does not show its processes)."""
        if self.db != "postgres":
            return None
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.pg_name,)
            ).fetchall()
        cpu = {pid: pid_cpu_s(pid) for (pid,) in rows}
        return None if not cpu or None in cpu.values() else cpu

    def redis_cpu_s(self) -> float | None:
        """CPU seconds so far of the Redis server the broker URL names, if it runs here."""
        if not self.redis_url:
            return None
        import redis

        with redis.Redis.from_url(self.redis_url) as client:
            return pid_cpu_s(int(client.info("server")["process_id"]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
