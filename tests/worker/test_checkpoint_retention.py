"""Retention (`config.checkpoint_keep_last`): the worker deletes the files of a job's older
checkpoints and marks their rows, never a pinned one (the guard's last good checkpoint) and
never the newest; on SQLite and PostgreSQL, and end to end through a real job. Also the job's
rows as the guard's checkpoint store."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from in_process import ADMIN_KEY, job_settings
from job_configs import tiny_job_config

from keel_server.api.app import create_app
from keel_server.db import session_scope
from keel_server.db.checkpoints import job_checkpoints, mark_deleted, pin_checkpoint
from keel_server.platform.settings import Settings
from keel_worker.jobrunner.checkpoints import (
    apply_retention,
    guard_checkpoints,
    register_checkpoint_dir,
)
from keel_worker.jobrunner.runner import run_job


@pytest.fixture
def settings(db_url: str, tmp_path) -> Settings:
    return job_settings(db_url, tmp_path)


def _project(http: TestClient) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    key = http.post("/v1/keys", json={"project": "p", "name": "k"}, headers=admin).json()["key"]
    return {"Authorization": f"Bearer {key}"}


def _fake_checkpoint(root, step: int):
    path = root / f"step_{step:06d}"
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "trainer_state.pt").write_bytes(b"s" * 100)
    return path


def test_old_checkpoints_go_pinned_and_newest_stay(settings, sessions, tmp_path) -> None:
    with TestClient(create_app(settings)) as http:
        headers = _project(http)
        body = {"config": tiny_job_config(model={"name": "tiny-dense"})}
        job_id = http.post("/v1/jobs", json=body, headers=headers).json()["id"]
        paths = {s: _fake_checkpoint(tmp_path / "ckpts", s) for s in (1, 2, 3, 4)}
        ids = {
            s: register_checkpoint_dir(sessions, job_id, p, step=s, policy_version=s)
            for s, p in paths.items()
        }
        with session_scope(sessions) as session:
            assert pin_checkpoint(session, ids[2])
            assert not pin_checkpoint(session, "ckpt_nope")
            assert not mark_deleted(session, ids[2])  # a pinned row cannot be marked

        assert apply_retention(sessions, job_id, keep_last=1) == [1, 3]
        assert {s: p.exists() for s, p in paths.items()} == {1: False, 2: True, 3: False, 4: True}
        listed = http.get(f"/v1/jobs/{job_id}/checkpoints", headers=headers).json()["data"]
        state = {
            c["step"]: (c["pinned"], c["deleted_at"] is not None, sorted(c["kinds"]))
            for c in listed
        }
        assert state == {
            1: (False, True, []),
            2: (True, False, ["full", "merged", "weights"]),
            3: (False, True, []),
            4: (False, False, ["full", "merged", "weights"]),
        }
        gone = http.get(f"/v1/checkpoints/{ids[1]}/download", headers=headers)
        assert gone.status_code == 409 and "retention" in gone.json()["detail"]
        assert gone.json()["state"]["deleted_at"]
        assert http.get(f"/v1/checkpoints/{ids[2]}/download", headers=headers).status_code == 200
        # A job may continue from a checkpoint that has its files, not from a deleted one.
        for step, status in ((4, 201), (1, 422)):
            config = {**tiny_job_config(), "model": {"checkpoint_id": ids[step]}}
            r = http.post("/v1/jobs", json={"config": config}, headers=headers)
            assert r.status_code == status, r.text
        assert "deleted by its job's retention policy" in r.json()["detail"]
        assert r.json()["errors"][0]["loc"] == ["body", "config", "model", "checkpoint_id"]
        replay = {
            **tiny_job_config(routing_replay="R2", num_minibatches=2),
            "model": {"checkpoint_id": ids[4]},
        }
        r = http.post("/v1/jobs", json={"config": replay}, headers=headers)
        assert r.status_code == 422 and f"'checkpoint {ids[4]}' is dense" in r.json()["detail"]

        # A row marked before a crash removed its files loses them on the next pass; a second
        # pass over the same rows deletes nothing more.
        with session_scope(sessions) as session:
            assert pin_checkpoint(session, ids[2], pinned=False)
            assert mark_deleted(session, ids[2])
        assert paths[2].exists()
        assert apply_retention(sessions, job_id, keep_last=1) == []
        assert not paths[2].exists() and paths[4].exists()


def test_the_guards_store_drops_later_rows_and_their_files_once_committed(
    settings, sessions, tmp_path
) -> None:
    with TestClient(create_app(settings)) as http:
        body = {"config": tiny_job_config(model={"name": "tiny-dense"})}
        job_id = http.post("/v1/jobs", json=body, headers=_project(http)).json()["id"]
    paths = {s: _fake_checkpoint(tmp_path / "ckpts", s) for s in (0, 1, 2, 3, 4)}
    ids = {
        s: register_checkpoint_dir(sessions, job_id, p, step=s, policy_version=s)
        for s, p in paths.items()
    }
    with session_scope(sessions) as session:
        mark_deleted(session, ids[1])  # retention took its files: never a rollback target
        pin_checkpoint(session, ids[3])

    # A failed transaction drops nothing: rows and files stay.
    with pytest.raises(RuntimeError), guard_checkpoints(sessions, job_id) as store:
        store.delete_after(0)
        raise RuntimeError("crash before the commit")
    assert all(p.exists() for p in paths.values())

    with guard_checkpoints(sessions, job_id) as store:
        kept = store.latest_at_most(1)
        assert (kept.step, kept.path) == (0, paths[0])
        assert store.latest_at_most(-1) is None
        store.pin(kept)
        store.delete_after(0)
        assert paths[2].exists()  # the files go only after the commit
    with session_scope(sessions) as session:
        rows = {r.step: r.pinned for r in job_checkpoints(session, job_id)}
    assert rows == {0: True, 3: True}  # the pinned row past the step stays
    assert {s: p.exists() for s, p in paths.items()} == {
        0: True,
        1: False,
        2: False,
        3: True,
        4: False,
    }


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_keeps_only_its_last_checkpoints(settings) -> None:
    config = tiny_job_config(
        model={"name": "tiny-dense"},
        rollout={"max_new_tokens": 2},
        steps=3,
        checkpoint_every=1,
        checkpoint_keep_last=2,
    )
    with TestClient(create_app(settings)) as http:
        headers = _project(http)
        job_id = http.post("/v1/jobs", json={"config": config}, headers=headers).json()["id"]
        assert run_job(job_id, settings).status == "succeeded"
        listed = http.get(f"/v1/jobs/{job_id}/checkpoints", headers=headers).json()["data"]
    assert [(c["step"], c["deleted_at"] is not None) for c in listed] == [
        (1, True),
        (2, False),
        (3, False),
    ]
    on_disk = settings.artifacts_dir / "jobs" / job_id / "checkpoints"
    assert sorted(p.name for p in on_disk.iterdir()) == ["step_000002", "step_000003"]
