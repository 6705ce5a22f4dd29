"""Rollout reward life cycle in the DB layer: CAS reward vs deadline, waiting for a step."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keel_server.db import prompts, session_scope, statement_scope, utcnow
from keel_server.db import rollouts as ro
from keel_server.db.metrics import step_metrics, write_step_metrics


def _record(factory, job_id, *, step=1, deadline_s=60.0, rewards=None):
    items = [ro.NewRollout(g, i, "p", "c", 2) for g in range(2) for i in range(2)]
    with session_scope(factory) as s:
        rows = ro.record_rollouts(
            s,
            job_id,
            step=step,
            policy_version=0,
            rollouts=items,
            rewards=rewards,
            deadline_at=utcnow() + timedelta(seconds=deadline_s),
        )
        return [r.id for r in rows]


@pytest.mark.parametrize("scope", [session_scope, statement_scope])
def test_reward_outcomes(session_factory, job_id, scope) -> None:
    ids = _record(session_factory, job_id)
    with scope(session_factory) as s:
        assert ro.set_reward(s, ids[0], 1.0)[0] is ro.RewardOutcome.CREATED
        assert ro.set_reward(s, ids[0], 1.0)[0] is ro.RewardOutcome.SAME
        assert ro.set_reward(s, ids[0], 0.0)[0] is ro.RewardOutcome.CONFLICT
        assert ro.set_reward(s, "ro_missing", 0.0)[0] is ro.RewardOutcome.NOT_FOUND
        late = utcnow() + timedelta(seconds=61)
        outcome, row = ro.set_reward(s, ids[1], 1.0, now=late)
        assert outcome is ro.RewardOutcome.EXPIRED
        assert (row.status, row.reward) == ("expired", None)
        assert ro.count_by_status(s, job_id, 1) == {
            "rewarded": 1,
            "expired": 1,
            "awaiting_reward": 2,
        }


@pytest.mark.services
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_statement_scope_commits_each_statement_on_postgres(session_factory, job_id) -> None:
    ids = _record(session_factory, job_id)
    with statement_scope(session_factory) as connection:
        assert ro.set_reward(connection, ids[0], 1.0)[0] is ro.RewardOutcome.CREATED
        # Another connection sees the reward before the scope ends: no transaction holds it.
        with session_scope(session_factory) as other:
            assert ro.get_rollout(other, ids[0]).reward == 1.0


def test_builtin_rewards_are_recorded_with_the_rollouts(session_factory, job_id) -> None:
    _record(session_factory, job_id, rewards=[1.0, 0.0, 0.5, 0.25])
    with session_scope(session_factory) as s:
        rows = ro.step_rollouts(s, job_id, 1)
    assert [(r.status, r.reward) for r in rows] == [
        ("rewarded", 1.0),
        ("rewarded", 0.0),
        ("rewarded", 0.5),
        ("rewarded", 0.25),
    ]


def test_wait_for_rewards_returns_when_all_are_rewarded_or_expired(session_factory, job_id):
    # The deadline leaves the first poll ample time on a loaded machine (at 0.3 s every rollout
    # had expired once before the "reward service" answered); the fourth then expires unscored.
    ids = _record(session_factory, job_id, deadline_s=1.5)
    polls = []

    def sleep(seconds):  # a reward service answering between polls
        polls.append(seconds)
        if len(polls) == 1:
            with session_scope(session_factory) as s:
                for rollout_id in ids[:3]:
                    ro.set_reward(s, rollout_id, 1.0)
        else:
            import time

            time.sleep(seconds)

    result = ro.wait_for_rewards(session_factory, job_id, 1, poll_interval_s=0.05, sleep=sleep)
    assert result.complete
    assert [(r.status, r.reward) for r in result.rollouts] == [
        ("rewarded", 1.0),
        ("rewarded", 1.0),
        ("rewarded", 1.0),
        ("expired", None),
    ]


def test_wait_stops_when_asked(session_factory, job_id) -> None:
    _record(session_factory, job_id)
    result = ro.wait_for_rewards(
        session_factory, job_id, 1, poll_interval_s=0.01, should_stop=lambda: True
    )
    assert not result.complete and len(result.rollouts) == 4


def test_prompts_stream_and_metrics_replace(session_factory, job_id) -> None:
    with session_scope(session_factory) as s:
        assert prompts.add_prompts(s, job_id, [("a", None), ("b", "B")]) == 2
        assert prompts.add_prompts(s, job_id, [("c", None)], batch_key="k") == 3
        assert [p.text for p in prompts.fetch_prompts(s, job_id, start=1, limit=5)] == ["b", "c"]
        assert [p.text for p in prompts.batch_prompts(s, job_id, "k")] == ["c"]
        write_step_metrics(s, job_id, 1, {"a": 1.0, "b": 2.0})
        write_step_metrics(s, job_id, 1, {"a": 3.0})
        assert step_metrics(s, job_id, 1) == {"a": 3.0}
