"""`bench/reward_ingest.py` at a small size, on SQLite and PostgreSQL: 20 clients posting three
rewards per rollout (the value twice, another value once) to a real `keel server` process; every
rollout's reward is stored exactly once, every repeat is a 200 and every other value a 409, and
no request fails. The exactly-once check itself is tested on a broken history."""

from __future__ import annotations

import pytest

from bench.reward_ingest import Result, check_exactly_once, run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def test_concurrent_reward_posts_are_stored_exactly_once(db):
    report = run(db, clients=20, rollouts=60)
    assert report.requests == 180
    assert report.exactly_once, report.violations
    assert set(report.statuses) == {"200", "409"}, report.statuses


def test_the_check_sees_a_double_write_and_a_lost_one():
    posts = [Result("r1", 0.5, 200, True, 0.01), Result("r1", 1.5, 200, True, 0.01),
             Result("r2", 0.5, 200, True, 0.01), Result("r2", 1.5, 409, False, 0.01)]  # fmt: skip
    violations = check_exactly_once(posts, {"r1": 1.5, "r2": None})
    assert any("r1: 2 posts created" in v for v in violations)
    assert any("r2: stored None" in v for v in violations)
    assert check_exactly_once(posts[2:], {"r2": 0.5}) == []
