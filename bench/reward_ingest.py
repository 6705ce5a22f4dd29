"""Reward ingestion under concurrency: N clients posting rewards to real `keel server`s, swept
over the number of clients and the number of API processes, against a target of 1,000 posts/s
with a p99 under 50 ms.

Each server runs as its own process (`keel migrate`, then `keel server --workers N` as a
deployment runs it: `--server-workers 1,2` compares one process with two) on SQLite (a file, as
in `keel up`) or a fresh PostgreSQL database. On PostgreSQL the servers' broker is Redis
(`--redis`), as in the compose deployment, so every request also takes its project's token from
the rate-limit bucket shared through Redis. The servers serve the whole sweep, as deployed APIs
do: starting one costs many seconds here, and a sweep point should measure the posts, not a cold
process; an unmeasured warm-up job goes first on each. The points are interleaved (at each
concurrency, every server in turn), so a load that other programs put on a shared machine falls
on the compared servers alike. Each point gets a job of its own with `--rollouts` awaiting
rollouts, written as the worker writes them, and `clients` concurrent clients, each with its own
keep-alive HTTP connection, post three rewards per rollout in random order: the value twice and a
different value once. Whichever arrives first wins, so per rollout exactly one post must say
`created`, every other post with the winning value is a 200 repeat, every post with the other
value is a 409, and the stored reward is the winner's: checked per point against the database
afterwards.

The clients are `bench/reward_clients.py` (one asyncio loop of minimal HTTP/1.1). The bench
servers' per-project request-rate limit and active-job quota are raised (an operator's settings;
the defaults, 200 requests/s per project and 16 active jobs, would answer this load with 429s).

Reports requests per second, latency percentiles and the CPU milliseconds per request of the
server processes and of the clients for each concurrency and process count, with the CPU and the
load averages before and after, and writes `bench/results/reward_ingest_<db>.json` and `.md`.

    .venv/bin/python -m bench.reward_ingest --db sqlite
    .venv/bin/python -m bench.reward_ingest --db postgres --server-workers 1,2 --rollouts 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from bench.machine import describe_machine, load_averages, uptime
from bench.reward_clients import Post, Result, post_all

RESULTS = Path(__file__).resolve().parent / "results"
ADMIN_KEY = "keel_admin_bench_0123456789abcdef"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/5"
DB_CONNECTIONS_PER_SERVER = 32  # half the largest concurrency swept
DEFAULT_CLIENTS = (1, 2, 4, 8, 16, 32, 64)
WARMUP_ROLLOUTS = 100
TARGET_REQUESTS_PER_S, TARGET_P99_MS = 1000.0, 50.0  # the sweep's target


@dataclass(frozen=True)
class Report:
    """One point of the sweep: `clients` concurrent clients."""

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
    server_cpu_ms_per_request: float | None = None  # the server process(es); None without /proc
    client_cpu_ms_per_request: float | None = None  # this process, which runs the clients
    # The PostgreSQL backends serving the server's database and the Redis server, where this
    # machine runs them (None elsewhere): with the two above, the CPU a post costs in all.
    database_cpu_ms_per_request: float | None = None
    redis_cpu_ms_per_request: float | None = None

    @property
    def total_cpu_ms_per_request(self) -> float | None:
        parts = (
            self.server_cpu_ms_per_request,
            self.client_cpu_ms_per_request,
            self.database_cpu_ms_per_request,
        )
        if any(part is None for part in parts):
            return None
        return round(sum(parts) + (self.redis_cpu_ms_per_request or 0.0), 2)


@dataclass(frozen=True)
class Sweep:
    """The points of one server: `server_workers` API processes."""

    db: str
    rollouts: int
    server_workers: int
    points: list[Report]
    warmup_exactly_once: bool
    shared_rate_limit: bool = False  # its broker was Redis: every request took a shared token

    @property
    def exactly_once(self) -> bool:
        return self.warmup_exactly_once and all(p.exactly_once for p in self.points)


# ---------------------------------------------------------------- the server


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
        return _tree_cpu_s(self.process.pid)

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
        cpu = {pid: _pid_cpu_s(pid) for (pid,) in rows}
        return None if not cpu or None in cpu.values() else cpu

    def redis_cpu_s(self) -> float | None:
        """CPU seconds so far of the Redis server the broker URL names, if it runs here."""
        if not self.redis_url:
            return None
        import redis

        with redis.Redis.from_url(self.redis_url) as client:
            return _pid_cpu_s(int(client.info("server")["process_id"]))


def _pid_cpu_s(pid: int) -> float | None:
    """utime + stime of one process; None where /proc does not show it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def _cpu_delta_ms(before: dict[int, float] | None, after: dict[int, float] | None, n: int):
    """CPU ms per request of the backends between two snapshots (a backend that appeared
    meanwhile counts from zero; one that ended meanwhile is missed: the server's pool keeps
    its connections, so few do)."""
    if before is None or after is None:
        return None
    return round(sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items()) / n * 1e3, 2)


def _tree_cpu_s(root: int) -> float | None:
    """utime + stime of `root` and its live descendants, plus what its reaped children used."""
    if not Path("/proc/self/stat").exists():
        return None
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[1] is the parent pid; [11], [12] utime, stime; [13], [14] the children's
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    tree, grew = {root}, True
    while grew:
        grown = tree | {pid for pid, (ppid, _) in stats.items() if ppid in tree}
        grew, tree = grown != tree, grown
    ticks = sum(stats[pid][1] for pid in tree if pid in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


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
    created = httpx.post(
        f"{server.url}/v1/jobs",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    created.raise_for_status()
    job = created.json()
    items = [NewRollout(i // 4, i % 4, f"p {i}", f"c {i}", 3) for i in range(rollouts)]
    engine = make_engine(server.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            rows = record_rollouts(
                session,
                job["id"],
                step=1,
                policy_version=0,
                deadline_at=utcnow() + timedelta(hours=1),
                rollouts=items,
            )
            ids = [r.id for r in rows]
    finally:
        engine.dispose()
    return job["reward_token"], ids


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


def sweep(
    db: str,
    *,
    clients: Sequence[int] = DEFAULT_CLIENTS,
    rollouts: int,
    seed: int = 0,
    server_workers: int = 1,
    warmup_rollouts: int = WARMUP_ROLLOUTS,
    redis_url: str | None = None,
) -> Sweep:
    """One server of `server_workers` processes: an unmeasured warm-up job, then one job of
    `rollouts` per concurrency."""
    (result,) = compare(
        db,
        clients=clients,
        rollouts=rollouts,
        seed=seed,
        server_workers=[server_workers],
        warmup_rollouts=warmup_rollouts,
        redis_url=redis_url,
    )
    return result


def compare(
    db: str,
    *,
    clients: Sequence[int] = DEFAULT_CLIENTS,
    rollouts: int,
    seed: int = 0,
    server_workers: Sequence[int] = (1,),
    warmup_rollouts: int = WARMUP_ROLLOUTS,
    redis_url: str | None = None,
) -> list[Sweep]:
    """One server per entry of `server_workers`, all up together; each gets a warm-up, then at
    each concurrency every server in turn gets a job of `rollouts` (the same posts, seeded per
    concurrency), so a passing load on the machine does not favour one server."""
    points: dict[int, list[Report]] = {}
    warmups: dict[int, bool] = {}
    with contextlib.ExitStack() as stack:
        servers = []
        for i, workers in enumerate(server_workers):
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keel-ingest-")))
            server = Server(db, home, workers=workers, redis_url=redis_url)
            stack.callback(server.stop)
            servers.append((i, server))
        for i, server in servers:
            warmup = (
                _point(server, max(clients), warmup_rollouts, seed) if warmup_rollouts else None
            )
            warmups[i] = warmup is None or warmup.exactly_once
        for k, n in enumerate(clients):
            for i, server in servers:
                points.setdefault(i, []).append(_point(server, n, rollouts, seed + 1 + k))
    return [
        Sweep(
            db=db,
            rollouts=rollouts,
            server_workers=workers,
            points=points[i],
            warmup_exactly_once=warmups[i],
            shared_rate_limit=bool(redis_url),
        )
        for i, workers in enumerate(server_workers)
    ]


def run(db: str, *, clients: int, rollouts: int, seed: int = 0) -> Report:
    """One concurrency on a server of its own, without a warm-up."""
    return sweep(db, clients=[clients], rollouts=rollouts, seed=seed, warmup_rollouts=0).points[0]


def _point(server: Server, clients: int, rollouts: int, seed: int) -> Report:
    token, ids = prepare_job(server, rollouts)
    posts = make_posts(ids, seed)
    db_cpu0, redis_cpu0 = server.database_cpu_s(), server.redis_cpu_s()
    server_cpu0, client_cpu0 = server.cpu_s(), time.process_time()
    results, wall_s = post_all(server.url, token, posts, clients)
    server_cpu1, client_cpu1 = server.cpu_s(), time.process_time()
    db_cpu1, redis_cpu1 = server.database_cpu_s(), server.redis_cpu_s()
    violations = check_exactly_once(results, stored_rewards(server.database_url, ids))
    n = len(results)
    if len(results) != len(posts):
        violations.insert(0, f"{len(posts)} posts sent, {n} answered")
    latencies_ms = sorted(r.latency_s * 1000 for r in results)
    per_request = None if server_cpu0 is None else round((server_cpu1 - server_cpu0) / n * 1e3, 2)
    return Report(
        db=server.db,
        clients=clients,
        rollouts=rollouts,
        requests=n,
        wall_s=round(wall_s, 3),
        requests_per_s=round(n / wall_s, 1),
        p50_ms=_pct(latencies_ms, 50),
        p95_ms=_pct(latencies_ms, 95),
        p99_ms=_pct(latencies_ms, 99),
        max_ms=round(latencies_ms[-1], 1),
        statuses={str(k): v for k, v in sorted(Counter(r.status for r in results).items())},
        exactly_once=not violations,
        violations=violations[:20],
        server_cpu_ms_per_request=per_request,
        client_cpu_ms_per_request=round((client_cpu1 - client_cpu0) / n * 1e3, 2),
        database_cpu_ms_per_request=_cpu_delta_ms(db_cpu0, db_cpu1, n),
        redis_cpu_ms_per_request=(
            None
            if redis_cpu0 is None or redis_cpu1 is None
            else round((redis_cpu1 - redis_cpu0) / n * 1e3, 3)
        ),
    )


def _pct(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))
    return round(sorted_values[index], 1)


def write_results(sweeps: Sequence[Sweep], *, machine: dict | None = None, note: str = "") -> Path:
    """`reward_ingest_<db>.json` (every point of every server in full) and `.md` (one table per
    server: the curve). `machine` is what `bench.machine` recorded around the run."""
    RESULTS.mkdir(exist_ok=True)
    db = sweeps[0].db
    machine = {**(machine or {}), "load_average_after": load_averages()}
    target = {"requests_per_s": TARGET_REQUESTS_PER_S, "p99_ms": TARGET_P99_MS}
    data = {
        "db": db,
        "rollouts": sweeps[0].rollouts,
        "exactly_once": all(s.exactly_once for s in sweeps),
        "target": target,
        "verdict": _verdict(sweeps),
        "cpu_ms_per_post": _cpu_per_post(sweeps),
        "note": note,
        "servers": [
            {
                "server_workers": s.server_workers,
                "shared_rate_limit": s.shared_rate_limit,
                "exactly_once": s.exactly_once,
                "warmup_exactly_once": s.warmup_exactly_once,
                "target_met_at_clients": [p.clients for p in s.points if _meets_target(p)],
                "points": [
                    {**asdict(p), "total_cpu_ms_per_request": p.total_cpu_ms_per_request}
                    for p in s.points
                ],
            }
            for s in sweeps
        ],
        "machine": machine,
    }
    path = RESULTS / f"reward_ingest_{db}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    cpu = machine.get("cpu", "an unnamed CPU")
    cores = machine.get("cores", os.cpu_count())
    counts = " and ".join(str(s.server_workers) for s in sweeps[:-1])
    counts = (
        _processes(sweeps[-1].server_workers)
        if not counts
        else (f"{counts} and {_processes(sweeps[-1].server_workers)}")
    )
    interleaved = ", the servers' points interleaved" if len(sweeps) > 1 else ""
    rate = (
        " Their broker is Redis, so each request also takes a token from its project's "
        "rate-limit bucket shared through Redis, as deployed."
        if sweeps[0].shared_rate_limit
        else ""
    )
    loads = ""
    if machine.get("uptime_before"):
        loads = (
            f" `uptime` before: `{machine['uptime_before']}`; load averages after: "
            f"{machine['load_average_after']}. The cores were shared with the clients, the "
            "database and other programs running on the machine."
        )
    parts = [
        f"# Reward ingestion, {db}\n",
        f"`keel server` with {counts} on {cores} cores ({cpu}), shared with the "
        f"clients and the database; per point a job of {sweeps[0].rollouts} rollouts × 3 posts "
        f"(the value twice, another once){interleaved}.{rate} Target: "
        f"≥ {TARGET_REQUESTS_PER_S:g} posts/s with p99 < {TARGET_P99_MS:g} ms: "
        f"{data['verdict']}. Exactly once at every point: "
        f"{'yes' if data['exactly_once'] else 'NO'}.{loads}\n",
    ]
    cost = data["cpu_ms_per_post"]
    if cost is not None:
        parts.append(
            f"A post costs {cost} ms of CPU in all (server, clients, database and Redis; the "
            "median over the points), whatever else the machine runs: "
            f"{TARGET_REQUESTS_PER_S:g} posts/s takes about "
            f"{cost * TARGET_REQUESTS_PER_S / 1000:.1f} cores of this CPU free for them, "
            f"against {cores} here.\n"
        )
    for s in sweeps:
        parts.append(f"## {_processes(s.server_workers)}\n\n" + _table(s) + "\n")
    if note:
        parts.append(note + "\n")
    path.with_suffix(".md").write_text("\n".join(parts))
    return path


def _cpu_per_post(sweeps: Sequence[Sweep]) -> float | None:
    """The median over every point of the CPU a post costs in all; None where a part was not
    measured."""
    totals = [p.total_cpu_ms_per_request for s in sweeps for p in s.points]
    if not totals or None in totals:
        return None
    return sorted(totals)[len(totals) // 2]


def _processes(n: int) -> str:
    return f"{n} API process{'es' if n != 1 else ''}"


def _table(result: Sweep) -> str:
    rows = [
        "| clients | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | statuses "
        "| exactly once | CPU ms/req: server | clients | database | Redis | all |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in result.points:
        statuses = ", ".join(f"{k}: {v}" for k, v in p.statuses.items())
        once = "yes" if p.exactly_once else "NO: " + "; ".join(p.violations)
        rows.append(
            f"| {p.clients} | {p.requests} | {p.requests_per_s} | {p.p50_ms} | {p.p95_ms} "
            f"| {p.p99_ms} | {p.max_ms} | {statuses} | {once} "
            f"| {_cell(p.server_cpu_ms_per_request)} | {_cell(p.client_cpu_ms_per_request)} "
            f"| {_cell(p.database_cpu_ms_per_request)} | {_cell(p.redis_cpu_ms_per_request)} "
            f"| {_cell(p.total_cpu_ms_per_request)} |"
        )
    return "\n".join(rows)


def _verdict(sweeps: Sequence[Sweep]) -> str:
    met = [
        f"{_processes(s.server_workers)} at {p.clients} clients"
        for s in sweeps
        for p in s.points
        if _meets_target(p)
    ]
    if met:
        return "met with " + ", ".join(met)
    within = []
    for s in sweeps:
        fast = [p for p in s.points if p.exactly_once and p.p99_ms < TARGET_P99_MS]
        best = max(fast, key=lambda p: p.requests_per_s, default=None)
        within.append(
            f"{best.requests_per_s} posts/s at {best.clients} clients (p99 {best.p99_ms} ms) "
            f"with {_processes(s.server_workers)}"
            if best
            else f"no point of {_processes(s.server_workers)}"
        )
    most = []
    for s in sweeps:
        best = max(s.points, key=lambda p: p.requests_per_s)
        most.append(
            f"{best.requests_per_s} at {best.clients} clients (p99 {best.p99_ms} ms) with "
            f"{_processes(s.server_workers)}"
        )
    return (
        f"not met: the most posts/s with p99 under {TARGET_P99_MS:g} ms are "
        + "; ".join(within)
        + " (the most at any latency: "
        + "; ".join(most)
        + ")"
    )


def _meets_target(point: Report) -> bool:
    return (
        point.exactly_once
        and point.requests_per_s >= TARGET_REQUESTS_PER_S
        and point.p99_ms < TARGET_P99_MS
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value}"


def _clients(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of client counts, each >= 1")
    return values


def _counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of counts, each >= 1")
    return values


def main(argv: list[str] | None = None) -> int:
    from keel_server.cli import api_processes

    cores = api_processes(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--clients",
        type=_clients,
        default=list(DEFAULT_CLIENTS),
        help="concurrencies to sweep, e.g. 1,2,4,8,16,32,64",
    )
    parser.add_argument(
        "--rollouts", type=int, default=500, help="rollouts per point (3 posts each)"
    )
    parser.add_argument(
        "--server-workers",
        type=_counts,
        default=sorted({1, cores}),
        help=f"API processes of each compared server (default 1,{cores}: one, and one per core "
        "as docker-compose runs it)",
    )
    parser.add_argument(
        "--redis",
        default=None,
        help=f"the servers' Redis broker, which shares the rate limit (default {REDIS_URL} on "
        "postgres, none on sqlite; 'none' for none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="a line for the .md (conditions of the run)")
    args = parser.parse_args(argv)
    redis_url = args.redis or (REDIS_URL if args.db == "postgres" else None)
    machine = describe_machine(uptime_before=uptime(), load_average_before=load_averages())
    results = compare(
        args.db,
        clients=args.clients,
        rollouts=args.rollouts,
        seed=args.seed,
        server_workers=args.server_workers,
        redis_url=None if redis_url == "none" else redis_url,
    )
    path = write_results(results, machine=machine, note=args.note)
    print(path.with_suffix(".md").read_text())
    return 0 if all(r.exactly_once for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
