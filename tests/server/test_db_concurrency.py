"""Compare-and-set under real concurrency (threads, separate connections): exactly one writer
wins a lease or a reward, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from keel_server.db import jobs as jobs_db
from keel_server.db import rollouts as ro
from keel_server.db import session_scope, statement_scope, utcnow

THREADS = 6


def test_exactly_one_worker_takes_the_lease(session_factory, job_id) -> None:

    def take(i: int) -> bool:
        with session_scope(session_factory) as s:
            return jobs_db.take_lease(s, job_id, f"w{i}", lease_timeout_s=60).acquired

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(take, range(THREADS)))
    assert sum(results) == 1


# statement_scope: the API's single post, each statement committing on its own on PostgreSQL.
@pytest.mark.parametrize("scope", [session_scope, statement_scope])
def test_exactly_one_reward_value_wins(session_factory, job_id, scope) -> None:
    with session_scope(session_factory) as s:
        (row,) = ro.record_rollouts(
            s,
            job_id,
            step=1,
            policy_version=0,
            deadline_at=utcnow() + timedelta(minutes=1),
            rollouts=[ro.NewRollout(0, 0, "p", "c", 1)],
        )

    def post(i: int) -> ro.RewardOutcome:
        with scope(session_factory) as s:
            return ro.set_reward(s, row.id, float(i))[0]

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(post, range(THREADS)))
    assert outcomes.count(ro.RewardOutcome.CREATED) == 1
    assert outcomes.count(ro.RewardOutcome.CONFLICT) == THREADS - 1
