"""`bench/reward_ingest.py` at a small size, on SQLite and PostgreSQL: 20 clients posting three
rewards per rollout (the value twice, another value once) to a real `keel server` process; every
rollout's reward is stored exactly once, every repeat is a 200 and every other value a 409, and
no request fails. A tiny concurrency sweep on one server checks that per point and writes the
curve. The exactly-once check itself is tested on a broken history."""

from __future__ import annotations

import json

import pytest

from bench import reward_ingest, reward_ingest_report
from bench.reward_clients import Result
from bench.reward_ingest import check_exactly_once, compare, run, sweep

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def test_concurrent_reward_posts_are_stored_exactly_once(db):
    report = run(db, clients=20, rollouts=60)
    assert report.requests == 180
    assert report.exactly_once, report.violations
    assert set(report.statuses) == {"200", "409"}, report.statuses


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def test_a_sweep_checks_every_point_and_writes_the_curve(db, tmp_path, monkeypatch):
    result = sweep(db, clients=[1, 4], rollouts=8, warmup_rollouts=4)
    assert [p.clients for p in result.points] == [1, 4]
    assert result.warmup_exactly_once and result.exactly_once, result.points
    for point in result.points:
        assert point.requests == 24 and set(point.statuses) == {"200", "409"}, point
        assert point.p50_ms <= point.p95_ms <= point.p99_ms <= point.max_ms
        assert point.client_cpu_ms_per_request is not None
    monkeypatch.setattr(reward_ingest_report, "RESULTS", tmp_path)
    path = reward_ingest_report.write_results([result])
    data = json.loads(path.read_text())
    (server,) = data["servers"]
    assert [p["clients"] for p in server["points"]] == [1, 4] and data["exactly_once"] is True
    table = [
        line
        for line in path.with_suffix(".md").read_text().splitlines()
        if line[:2] in ("| ", "|-")
    ]
    assert len(table) == 2 + 2  # header, rule, one row per point


@pytest.mark.services
def test_one_and_two_api_processes_on_postgres_and_redis(tmp_path, monkeypatch):
    """The comparison the results file holds: servers of 1 and 2 processes side by side, their
    rate limit shared through Redis (raised far above the load, so no post is refused)."""
    one, two = compare(
        "postgres",
        clients=[4],
        rollouts=8,
        server_workers=[1, 2],
        warmup_rollouts=4,
        redis_url=reward_ingest.REDIS_URL,
    )
    assert (one.server_workers, two.server_workers) == (1, 2)
    for result in (one, two):
        assert result.shared_rate_limit and result.exactly_once, result.points
        assert set(result.points[0].statuses) == {"200", "409"}
    monkeypatch.setattr(reward_ingest_report, "RESULTS", tmp_path)
    path = reward_ingest_report.write_results([one, two], machine={"cpu": "a test CPU", "cores": 2})
    data = json.loads(path.read_text())
    assert [s["server_workers"] for s in data["servers"]] == [1, 2]
    # Every part of a post's CPU is measured here (PostgreSQL and Redis run on this machine;
    # 24 posts may take less than a clock tick of either, so only the server's must show).
    for point in one.points + two.points:
        assert point.database_cpu_ms_per_request >= 0 and point.redis_cpu_ms_per_request >= 0
        assert point.total_cpu_ms_per_request >= point.server_cpu_ms_per_request > 0
    assert data["cpu_ms_per_post"] > 0 and "ms of CPU in all" in path.with_suffix(".md").read_text()
    assert (
        data["machine"]["cpu"] == "a test CPU" and len(data["machine"]["load_average_after"]) == 3
    )
    md = path.with_suffix(".md").read_text()
    assert "## 1 API process\n" in md and "## 2 API processes\n" in md


def test_the_counts_lists_parse():
    assert reward_ingest._counts("1,2,4") == [1, 2, 4]
    with pytest.raises(Exception, match="comma-separated"):
        reward_ingest._counts("0,2")


def test_the_check_sees_a_double_write_and_a_lost_one():
    posts = [
        Result("r1", 0.5, 200, True, 0.01),
        Result("r1", 1.5, 200, True, 0.01),
        Result("r2", 0.5, 200, True, 0.01),
        Result("r2", 1.5, 409, False, 0.01),
    ]
    violations = check_exactly_once(posts, {"r1": 1.5, "r2": None})
    assert any("r1: 2 posts created" in v for v in violations)
    assert any("r2: stored None" in v for v in violations)
    assert check_exactly_once(posts[2:], {"r2": 0.5}) == []
