"""Reward ingestion under concurrency: N clients posting rewards to a real `keel server`
(issue 10, item 16).

The server runs as its own process (uvicorn, as `keel server` runs it) on SQLite (a file, as in
`keel up`) or a fresh PostgreSQL database. One job gets `--rollouts` awaiting rollouts, written
as the worker writes them; then `--clients` threads, each with its own HTTP connection, post
three rewards per rollout in random order: the value twice and a different value once. Whichever
arrives first wins, so per rollout exactly one post must say `created`, every other post with
the winning value is a 200 repeat, every post with the other value is a 409, and the stored
reward is the winner's. Reports requests per second and latency percentiles and writes
`bench/results/reward_ingest_<db>.json` and `.md`.

    .venv/bin/python bench/reward_ingest.py --db sqlite
    .venv/bin/python bench/reward_ingest.py --db postgres --clients 20 --rollouts 400
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import httpx

RESULTS = Path(__file__).resolve().parent / "results"
ADMIN_KEY = "keel_admin_bench_0123456789abcdef"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Post:
    rollout_id: str
    value: float


@dataclass
class Result:
    rollout_id: str
    value: float
    status: int  # HTTP status; 0 = transport error
    created: bool
    latency_s: float


@dataclass(frozen=True)
class Report:
    db: str
    clients: int
    rollouts: int
    requests: int
    wall_s: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    exactly_once: bool
    violations: list[str]


# ---------------------------------------------------------------- the server


class Server:
    """`keel migrate` then `keel server` on a database of its own, in a temporary home."""

    def __init__(self, db: str, home: Path) -> None:
        self.db, self.home = db, home
        self.database_url = self._database()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        self.env.update(KEEL_HOME=str(home), KEEL_ADMIN_KEY=ADMIN_KEY,
                        KEEL_DATABASE_URL=self.database_url)  # fmt: skip
        cli = [sys.executable, "-m", "keel_server.cli"]
        subprocess.run([*cli, "migrate"], env=self.env, check=True, capture_output=True)
        self.log = open(home / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([*cli, "server", "--port", str(port)], env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        self._wait_live()

    def _database(self) -> str:
        if self.db == "sqlite":
            return f"sqlite:///{self.home / 'keel.db'}"
        import psycopg

        self.pg_name = f"keel_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.pg_name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.pg_name}"

    def _wait_live(self) -> None:
        deadline = time.monotonic() + 60
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

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()
        if self.db == "postgres":
            import psycopg

            with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_job(server: Server, rollouts: int) -> tuple[str, list[str]]:
    """A job with an external reward source and `rollouts` awaiting rollouts; returns its
    reward token and the rollout ids."""
    from keel_server.db import make_engine, make_session_factory, session_scope, utcnow
    from keel_server.db.rollouts import NewRollout, record_rollouts

    config = {"model": {"name": "tiny-moe"}, "steps": 1, "prompts_per_step": 2, "group_size": 2}
    body = {"config": config, "reward": {"type": "external", "deadline_s": 3600}}
    created = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    created.raise_for_status()
    job = created.json()
    items = [NewRollout(i // 4, i % 4, f"p {i}", f"c {i}", 3) for i in range(rollouts)]
    engine = make_engine(server.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            rows = record_rollouts(
                session, job["id"], step=1, policy_version=0,
                deadline_at=utcnow() + timedelta(hours=1), rollouts=items,
            )  # fmt: skip
            ids = [r.id for r in rows]
    finally:
        engine.dispose()
    return job["reward_token"], ids


# ---------------------------------------------------------------- the clients


def post_all(url: str, token: str, posts: list[Post], clients: int) -> tuple[list[Result], float]:
    """Post everything from `clients` threads (one connection each); returns results and wall
    time."""
    results: list[Result] = []
    lock = threading.Lock()
    todo = iter(posts)

    def client() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            while True:
                with lock:
                    post = next(todo, None)
                if post is None:
                    return
                result = _post_one(http, post)
                with lock:
                    results.append(result)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def _post_one(http: httpx.Client, post: Post) -> Result:
    start = time.perf_counter()
    try:
        response = http.post(f"/v1/rollouts/{post.rollout_id}/reward", json={"value": post.value})
        status = response.status_code
        created = status == 200 and bool(response.json().get("created"))
    except httpx.HTTPError:
        status, created = 0, False
    return Result(post.rollout_id, post.value, status, created, time.perf_counter() - start)


def make_posts(rollout_ids: list[str], seed: int) -> list[Post]:
    """Per rollout: its value twice and a different value once, all shuffled together."""
    posts = []
    for i, rollout_id in enumerate(rollout_ids):
        value = float(i % 7) / 7
        posts += [Post(rollout_id, value), Post(rollout_id, value), Post(rollout_id, value + 1)]
    random.Random(seed).shuffle(posts)
    return posts


def check_exactly_once(results: list[Result], stored: dict[str, float | None]) -> list[str]:
    """What breaks exactly-once: per rollout one `created`, the stored value is its value,
    every other post with that value a 200 repeat and every post with another value a 409."""
    violations = []
    by_rollout: dict[str, list[Result]] = {}
    for result in results:
        by_rollout.setdefault(result.rollout_id, []).append(result)
    for rollout_id, posts in sorted(by_rollout.items()):
        winners = [p for p in posts if p.created]
        if len(winners) != 1:
            violations.append(f"{rollout_id}: {len(winners)} posts created a reward")
            continue
        value = winners[0].value
        if stored.get(rollout_id) != value:
            violations.append(f"{rollout_id}: stored {stored.get(rollout_id)}, won with {value}")
        for p in posts:
            expected = 200 if p.value == value else 409
            if p.status != expected:
                violations.append(f"{rollout_id}: a post of {p.value} got {p.status}")
    return violations


def stored_rewards(database_url: str, rollout_ids: list[str]) -> dict[str, float | None]:
    from keel_server.db import make_engine, make_session_factory, session_scope
    from keel_server.db.rollouts import get_rollout

    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return {i: get_rollout(session, i).reward for i in rollout_ids}
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the run


def run(db: str, *, clients: int, rollouts: int, seed: int = 0) -> Report:
    with tempfile.TemporaryDirectory(prefix="keel-ingest-") as tmp:
        server = Server(db, Path(tmp))
        try:
            token, ids = prepare_job(server, rollouts)
            results, wall_s = post_all(server.url, token, make_posts(ids, seed), clients)
            violations = check_exactly_once(results, stored_rewards(server.database_url, ids))
        finally:
            server.stop()
    latencies_ms = sorted(r.latency_s * 1000 for r in results)
    return Report(
        db=db, clients=clients, rollouts=rollouts, requests=len(results), wall_s=round(wall_s, 3),
        requests_per_s=round(len(results) / wall_s, 1),
        p50_ms=_pct(latencies_ms, 50), p95_ms=_pct(latencies_ms, 95),
        p99_ms=_pct(latencies_ms, 99), max_ms=round(latencies_ms[-1], 1),
        statuses={str(k): v for k, v in sorted(Counter(r.status for r in results).items())},
        exactly_once=not violations, violations=violations[:20],
    )  # fmt: skip


def _pct(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))
    return round(sorted_values[index], 1)


def write_results(report: Report) -> Path:
    RESULTS.mkdir(exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    data = {**asdict(report), "machine": machine}
    path = RESULTS / f"reward_ingest_{report.db}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    md = (
        f"# Reward ingestion, {report.db}\n\n"
        f"{report.clients} clients, {report.rollouts} rollouts × 3 posts = {report.requests} "
        f"requests on {os.cpu_count()} CPUs: **{report.requests_per_s} req/s**, p50 "
        f"{report.p50_ms} ms, p95 {report.p95_ms} ms, **p99 {report.p99_ms} ms**, max "
        f"{report.max_ms} ms. HTTP statuses {report.statuses}; exactly once: "
        f"{'yes' if report.exactly_once else 'NO: ' + '; '.join(report.violations)}.\n"
    )
    path.with_suffix(".md").write_text(md)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rollouts", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run(args.db, clients=args.clients, rollouts=args.rollouts, seed=args.seed)
    print(write_results(report).with_suffix(".md").read_text())
    return 0 if report.exactly_once else 1


if __name__ == "__main__":
    sys.exit(main())
