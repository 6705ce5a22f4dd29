"""The outside probe's cross-tenant attack (hardening issue item 1), end to end: project A
trains and checkpoints; project B names A's checkpoint folder as its model. The API refuses it
whatever the model roots say, and a job row that names it anyway (written before a policy
change, or by hand) fails in the worker without loading a byte of A's weights."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from job_configs import tiny_job_config
from sqlalchemy import update

from keel_server.api.app import create_app
from keel_server.db import make_engine, make_session_factory, session_scope
from keel_server.db.models import Job
from keel_server.migrate import upgrade
from keel_server.settings import Settings
from keel_worker.jobrunner.runner import run_job

ADMIN_KEY = "keel_admin_policy_test_0123456789"
CONFIG = tiny_job_config(
    model={"name": "tiny-dense"}, rollout={"max_new_tokens": 4}, steps=1, checkpoint_every=1
)


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    upgrade(sqlite_url)
    # The operator allows everything under tmp_path, keel's own state included.
    return Settings(
        home=tmp_path / "home", database_url=sqlite_url, admin_key=ADMIN_KEY,
        model_roots=(tmp_path,), heartbeat_interval_s=0.2, reward_poll_interval_s=0.05,
    )  # fmt: skip


def _key(http: TestClient, project: str) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = http.post("/v1/keys", json={"project": project, "name": "k"}, headers=admin)
    return {"Authorization": f"Bearer {r.json()['key']}"}


def _create(http: TestClient, headers, model: str):
    body = {"config": {**CONFIG, "model": {"name": model}}}
    return http.post("/v1/jobs", json=body, headers=headers)


def test_a_project_cannot_train_from_another_projects_checkpoint(settings) -> None:
    with TestClient(create_app(settings)) as http:
        alice, mallory = _key(http, "alice"), _key(http, "mallory")
        victim = _create(http, alice, "tiny-dense").json()["id"]
        assert run_job(victim, settings).status == "succeeded"
        [ckpt] = http.get(f"/v1/jobs/{victim}/checkpoints", headers=alice).json()["data"]
        folder = next((settings.artifacts_dir / "jobs" / victim / "checkpoints").iterdir())
        assert (folder / "config.json").is_file()

        for name in (str(folder), f"{settings.artifacts_dir}/jobs/{victim}/../{victim}/"
                     f"checkpoints/{folder.name}"):  # fmt: skip
            r = _create(http, mallory, name)
            assert r.status_code == 422, r.text
            assert "not available" in r.text and str(settings.home) not in r.text.replace(
                name, ""
            )
        assert http.get(f"/v1/checkpoints/{ckpt['id']}", headers=mallory).status_code == 404

        # A row that names the folder anyway fails in the worker, before anything is loaded.
        attack = _create(http, mallory, "tiny-dense").json()["id"]
        engine = make_engine(settings.database_url)
        with session_scope(make_session_factory(engine)) as session:
            session.execute(
                update(Job).where(Job.id == attack)
                .values(config={**CONFIG, "model": {"name": str(folder)}})
            )  # fmt: skip
        engine.dispose()
        assert run_job(attack, settings).status == "failed"
        job = http.get(f"/v1/jobs/{attack}", headers=mallory).json()
        assert "ModelNotAllowed" in job["error"] and "not available" in job["error"]
        assert http.get(f"/v1/jobs/{attack}/checkpoints", headers=mallory).json()["data"] == []
