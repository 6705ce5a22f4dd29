"""The Tinker request queue: a retry is answered once, a reused seq_id conflicts, the worker's
order is seq_id first, and a gap that never fills fails the calls behind it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keel_server.db import session_scope, utcnow
from keel_server.db import tinker as tk


def _submit(s, job_id, seq, body=b"x", kind="forward_backward"):
    return tk.submit(s, job_id=job_id, seq_id=seq, kind=kind, payload=body, content_type="proto")


def test_a_retry_finds_its_row_and_another_body_conflicts(session_factory, job_id) -> None:
    with session_scope(session_factory) as s:
        first = _submit(s, job_id, 1, b"batch")
        again = _submit(s, job_id, 1, b"batch")
        assert again.id == first.id
        with pytest.raises(tk.SeqConflict, match="seq_id 1"):
            _submit(s, job_id, 1, b"another batch")
        assert _submit(s, job_id, None, b"s").id != _submit(s, job_id, None, b"s").id


def test_queued_calls_come_in_seq_order_then_by_age(session_factory, job_id) -> None:
    with session_scope(session_factory) as s:
        sample = _submit(s, job_id, None, kind="sample")
        third, first, second = (_submit(s, job_id, n) for n in (3, 1, 2))
        assert [r.id for r in tk.queued(s, job_id)] == [first.id, second.id, third.id, sample.id]
        assert tk.start(s, first.id) and not tk.start(s, first.id)
        tk.finish(s, first.id, {"metrics": {}})
        tk.fail(s, second.id, "bad shapes")
        assert tk.last_finished_seq(s, job_id) == 2
        assert [r.id for r in tk.queued(s, job_id)] == [third.id, sample.id]
        assert tk.fail_open(s, job_id, "worker lost") == 2
    with session_scope(session_factory) as s:
        assert tk.get_request(s, third.id).error == "worker lost"
        assert tk.get_request(s, first.id).result == {"metrics": {}}


def test_a_gap_fails_the_later_calls_only_after_its_bound(session_factory, job_id) -> None:
    with session_scope(session_factory) as s:
        later = _submit(s, job_id, 5)
        since = utcnow()
        assert tk.fail_after_gap(s, job_id, missing_seq=4, waited_since=since, bound_s=30) == 0
        old = since - timedelta(seconds=31)
        assert tk.fail_after_gap(s, job_id, missing_seq=4, waited_since=old, bound_s=30) == 1
    with session_scope(session_factory) as s:
        row = tk.get_request(s, later.id)
        assert row.state == "failed" and "seq_id 4 never arrived" in row.error


def test_saving_under_a_name_again_replaces_it(session_factory, job_id) -> None:
    with session_scope(session_factory) as s:
        one = tk.record_weights(
            s, job_id=job_id, kind="weights", name="w", path="a", policy_version=1
        )
        two = tk.record_weights(
            s, job_id=job_id, kind="weights", name="w", path="b", policy_version=2
        )
        assert one.id == two.id and tk.find_weights(s, job_id, "weights", "w").path == "b"
        assert [w.path for w in tk.list_weights(s, job_id)] == ["b"]
