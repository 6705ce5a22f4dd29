"""`bench/reward_ingest_report.py`: the verdict against the sweep's target names the points that
met it, or else each server's best point under the latency target and its best at any latency."""

from __future__ import annotations

from bench import reward_ingest_report
from bench.reward_ingest_report import Report, Sweep


def test_the_verdict_names_where_the_target_was_met_or_the_best_points():
    def point(clients: int, per_s: float, p99_ms: float, once: bool = True) -> Report:
        return Report("postgres", clients, 1, 3, 1.0, per_s, 1.0, 1.0, p99_ms, 1.0, {}, once, [])

    def server(workers: int, *points: Report) -> Sweep:
        return Sweep("postgres", 1, workers, list(points), True)

    slow = server(1, point(4, 300.0, 20.0), point(16, 350.0, 80.0))
    fast = server(2, point(4, 900.0, 10.0), point(16, 1100.0, 40.0), point(32, 1200.0, 60.0))
    assert reward_ingest_report._verdict([slow, fast]) == "met with 2 API processes at 16 clients"
    broken = server(2, point(8, 700.0, 30.0), point(16, 1100.0, 40.0, once=False))
    assert reward_ingest_report._verdict([slow, broken]) == (
        "not met: the most posts/s with p99 under 50 ms are 300.0 posts/s at 4 clients "
        "(p99 20.0 ms) with 1 API process; 700.0 posts/s at 8 clients (p99 30.0 ms) with "
        "2 API processes (the most at any latency: 350.0 at 16 clients (p99 80.0 ms) with "
        "1 API process; 1100.0 at 16 clients (p99 40.0 ms) with 2 API processes)"
    )
