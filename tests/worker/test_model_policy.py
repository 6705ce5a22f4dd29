"""The outside probe's cross-tenant attack (hardening issue item 1), end to end: project A
trains and checkpoints; project B names A's checkpoint folder as its model. The API refuses it
whatever the model roots say, and a job row that names it anyway (written before a policy
change, or by hand) fails in the worker without loading a byte of A's weights.

Continuing by checkpoint id (`config.model.checkpoint_id`) is the one way into keel's
artifacts: a project's own checkpoint starts the new job from its weights; another project's
id is a 404 at the API and a failed job in the worker."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from in_process import ADMIN_KEY, job_settings
from job_configs import tiny_job_config
from sqlalchemy import update
from transformers import AutoModelForCausalLM

from keel_server.api.app import create_app
from keel_server.db import make_engine, make_session_factory, session_scope
from keel_server.db.models import Job
from keel_server.platform.settings import Settings
from keel_worker.engines.models import load_model
from keel_worker.jobrunner.checkpoints import register_checkpoint_dir
from keel_worker.jobrunner.runner import run_job
from keel_worker.training.checkpoint import TrainerState, save_checkpoint

CONFIG = tiny_job_config(
    model={"name": "tiny-dense"}, rollout={"max_new_tokens": 4}, steps=1, checkpoint_every=1
)


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    # The operator allows everything under tmp_path, keel's own state included.
    return job_settings(sqlite_url, tmp_path, model_roots=(tmp_path,))


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

        for name in (
            str(folder),
            f"{settings.artifacts_dir}/jobs/{victim}/../{victim}/checkpoints/{folder.name}",
        ):
            r = _create(http, mallory, name)
            assert r.status_code == 422, r.text
            assert "not available" in r.text and str(settings.home) not in r.text.replace(name, "")
        assert http.get(f"/v1/checkpoints/{ckpt['id']}", headers=mallory).status_code == 404

        # A row that names the folder anyway fails in the worker, before anything is loaded.
        attack = _create(http, mallory, "tiny-dense").json()["id"]
        engine = make_engine(settings.database_url)
        with session_scope(make_session_factory(engine)) as session:
            session.execute(
                update(Job)
                .where(Job.id == attack)
                .values(config={**CONFIG, "model": {"name": str(folder)}})
            )
        engine.dispose()
        assert run_job(attack, settings).status == "failed"
        job = http.get(f"/v1/jobs/{attack}", headers=mallory).json()
        assert "ModelNotAllowed" in job["error"] and "not available" in job["error"]
        assert http.get(f"/v1/jobs/{attack}/checkpoints", headers=mallory).json()["data"] == []


def _logits(path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 17, 33, 2]])).logits


def _only_checkpoint(http: TestClient, headers, job_id: str) -> dict:
    [ckpt] = http.get(f"/v1/jobs/{job_id}/checkpoints", headers=headers).json()["data"]
    return ckpt


@pytest.mark.slow
def test_a_job_continues_from_its_projects_checkpoint(settings, tmp_path) -> None:
    # A trains one step that clearly moves the weights (decoupled weight decay shrinks every
    # weight by lr × wd = 5 %); B continues from A's checkpoint with lr 1e-9, which moves no
    # weight by more than ~1e-9, so B's weights are A's if and only if B started from them.
    first = {**CONFIG, "optimizer": {"lr": 0.1, "weight_decay": 0.5}}
    with TestClient(create_app(settings)) as http:
        alice = _key(http, "alice")
        a = http.post("/v1/jobs", json={"config": first}, headers=alice).json()["id"]
        assert run_job(a, settings).status == "succeeded"
        ckpt_a = _only_checkpoint(http, alice, a)

        second = {**CONFIG, "model": {"checkpoint_id": ckpt_a["id"]}, "optimizer": {"lr": 1e-9}}
        r = http.post("/v1/jobs", json={"config": second}, headers=alice)
        assert r.status_code == 201, r.text
        assert r.json()["config"]["model"] == {"name": None, "checkpoint_id": ckpt_a["id"]}
        b = r.json()["id"]
        assert run_job(b, settings).status == "succeeded"
        ckpt_b = _only_checkpoint(http, alice, b)

    rows = {c["id"]: c for c in (ckpt_a, ckpt_b)}
    assert len(rows) == 2
    folder = settings.artifacts_dir / "jobs"
    logits_a = _logits(next((folder / a / "checkpoints").iterdir()))
    logits_b = _logits(next((folder / b / "checkpoints").iterdir()))
    base = load_model("tiny-dense", cache_dir=tmp_path / "cache").model
    with torch.no_grad():
        logits_base = base(torch.tensor([[1, 5, 9, 17, 33, 2]])).logits
    assert (logits_a - logits_base).abs().max() > 1e-2
    torch.testing.assert_close(logits_b, logits_a, atol=1e-5, rtol=0)
    assert ckpt_b["policy_version"] == 1  # a new run: its own step count and optimizer


def test_a_project_cannot_continue_from_another_projects_checkpoint_id(settings, tmp_path) -> None:
    with TestClient(create_app(settings)) as http:
        alice, mallory = _key(http, "alice"), _key(http, "mallory")
        victim = _create(http, alice, "tiny-dense").json()["id"]
        loaded = load_model("tiny-dense", cache_dir=tmp_path / "cache")
        path = save_checkpoint(
            settings.artifacts_dir / "jobs" / victim / "checkpoints" / "step_000001",
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            state=TrainerState(step=1, policy_version=1, data_cursor=2, optimizer={}),
        )
        engine = make_engine(settings.database_url)
        factory = make_session_factory(engine)
        ckpt_id = register_checkpoint_dir(factory, victim, path, step=1, policy_version=1)
        by_id = {**CONFIG, "model": {"checkpoint_id": ckpt_id}}

        # The owner may continue from it; another project gets the 404 of every foreign read,
        # as does an id that does not exist at all.
        assert http.post("/v1/jobs", json={"config": by_id}, headers=alice).status_code == 201
        for headers, ident in ((mallory, ckpt_id), (alice, "ckpt_nope")):
            config = {**CONFIG, "model": {"checkpoint_id": ident}}
            r = http.post("/v1/jobs", json={"config": config}, headers=headers)
            assert r.status_code == 404, r.text
            detail = f"checkpoint {ident!r} does not exist"
            assert r.json() == {"code": "not_found", "detail": detail}
        both = {**CONFIG, "model": {"name": "tiny-dense", "checkpoint_id": ckpt_id}}
        assert http.post("/v1/jobs", json={"config": both}, headers=alice).status_code == 422

        # A row that names it anyway fails in the worker, before anything is loaded.
        attack = _create(http, mallory, "tiny-dense").json()["id"]
        with session_scope(factory) as session:
            session.execute(update(Job).where(Job.id == attack).values(config=by_id))
        engine.dispose()
        assert run_job(attack, settings).status == "failed"
        job = http.get(f"/v1/jobs/{attack}", headers=mallory).json()
        assert "CheckpointNotFound" in job["error"] and str(settings.home) not in job["error"]
        assert http.get(f"/v1/jobs/{attack}/checkpoints", headers=mallory).json()["data"] == []
