"""The results of `bench.reward_ingest`: a sweep's points, the target, the verdict against it,
and `bench/results/reward_ingest_<db>.json` and `.md`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.machine import load_averages

RESULTS = Path(__file__).resolve().parent / "results"
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
