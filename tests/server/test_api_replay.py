"""Routing Replay checks at job creation: R2/R3 on a dense model and any replay on an MoE family
keel cannot hook are 422s, with the very messages the worker raises (keel.types.routing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from keel.types.routing import dense_replay_message, unsupported_moe_message
from keel_server.main import create_app


def _model_dir(root: Path, name: str, config: dict) -> str:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture
def local(settings, tmp_path, admin):
    """A client whose operator allows models under `tmp_path/models`, and that folder."""
    root = tmp_path / "models"
    root.mkdir()
    app = create_app(settings.model_copy(update={"model_roots": (root,)}))
    with TestClient(app) as client:
        r = client.post("/v1/keys", json={"project": "alpha", "name": "test"}, headers=admin)
        yield client, {"Authorization": f"Bearer {r.json()['key']}"}, root


def _create(client, headers, job_body, model: str, replay: str):
    body = job_body(config={"model": {"name": model}, "routing_replay": replay})
    return client.post("/v1/jobs", json=body, headers=headers)


def _msg(response) -> str:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    (error,) = body["errors"]
    assert error["loc"] == ["body", "config", "routing_replay"]
    return error["msg"]


@pytest.mark.parametrize("mode", ["R2", "R3"])
def test_replay_on_a_builtin_dense_model_is_the_workers_message(
    job_body, client, project_key, mode
) -> None:
    r = _create(client, project_key("alpha"), job_body, "tiny-dense", mode)
    assert _msg(r) == dense_replay_message(mode, "tiny-dense")


def test_local_models_by_family(local, job_body) -> None:
    client, headers, root = local
    dense = _model_dir(root, "dense", {"model_type": "llama"})
    granite = _model_dir(root, "granite", {"model_type": "granitemoe", "num_local_experts": 4})
    qwen = _model_dir(root, "qwen", {"model_type": "qwen3_moe", "num_experts": 8})
    assert _msg(_create(client, headers, job_body, dense, "R3")) == dense_replay_message(
        "R3", dense
    )
    for mode in ("auto", "R2", "R3"):
        r = _create(client, headers, job_body, granite, mode)
        assert _msg(r) == unsupported_moe_message(mode, granite, "granitemoe")
    # Without replay the unhookable family trains; a hooked family takes every mode; a dense
    # model with `auto` simply gets none.
    created = [
        _create(client, headers, job_body, granite, "none"),
        *(_create(client, headers, job_body, qwen, mode) for mode in ("auto", "R2", "R3")),
        _create(client, headers, job_body, dense, "auto"),
    ]
    assert [r.status_code for r in created] == [201] * 5
    assert all(r.json()["routing_replay"] is None for r in created)  # no step has run yet


def test_a_hub_id_is_decided_by_the_worker(job_body, client, project_key) -> None:
    r = _create(client, project_key("alpha"), job_body, "org/maybe-dense", "R3")
    assert r.status_code == 201, r.text
