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

The clients are `bench/reward_clients.py` (one asyncio loop of minimal HTTP/1.1), the servers
`bench/reward_server.py`. The bench servers' per-project request-rate limit and active-job quota
are raised (an operator's settings; the defaults, 200 requests/s per project and 16 active jobs,
would answer this load with 429s).

Reports requests per second, latency percentiles and the CPU milliseconds per request of the
server processes and of the clients for each concurrency and process count, with the CPU and the
load averages before and after, and writes `bench/results/reward_ingest_<db>.json` and `.md`
(`bench/reward_ingest_report.py`).

    .venv/bin/python -m bench.reward_ingest --db sqlite
    .venv/bin/python -m bench.reward_ingest --db postgres --server-workers 1,2 --rollouts 500
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import httpx

from bench.machine import describe_machine, load_averages, uptime
from bench.proc_cpu import cpu_delta_ms
from bench.reward_clients import Post, Result, post_all
from bench.reward_ingest_report import Report, Sweep, write_results
from bench.reward_server import ADMIN_KEY, Server

REDIS_URL = "redis://127.0.0.1:6379/5"
DEFAULT_CLIENTS = (1, 2, 4, 8, 16, 32, 64)
WARMUP_ROLLOUTS = 100


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
        database_cpu_ms_per_request=cpu_delta_ms(db_cpu0, db_cpu1, n),
        redis_cpu_ms_per_request=(
            None
            if redis_cpu0 is None or redis_cpu1 is None
            else round((redis_cpu1 - redis_cpu0) / n * 1e3, 3)
        ),
    )


def _pct(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))
    return round(sorted_values[index], 1)


def _counts(text: str) -> list[int]:
    """A comma-separated list of counts, each >= 1 (client concurrencies, server workers)."""
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
        type=_counts,
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
