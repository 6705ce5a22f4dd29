"""Prompts longer than the model's context: refused with a 422 at submission where the API can
know the limit (the built-in tiny models: one token per UTF-8 byte, a context of
`BYTE_LEVEL_CONTEXT`), and otherwise failed by the worker before it generates, naming the
prompt (here: the same tiny model saved as a local Hugging Face folder, which the API cannot
measure). The server's table of contexts is checked against the worker's models."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from in_process import ADMIN_KEY, job_settings
from job_configs import tiny_job_config

from keel_server.api.app import create_app
from keel_server.platform.prompt_bounds import BYTE_LEVEL_CONTEXT
from keel_server.platform.settings import Settings
from keel_worker.engines.models import load_model
from keel_worker.jobrunner.runner import run_job

MAX_NEW = 16
CONFIG = tiny_job_config(
    model={"name": "tiny-dense"}, rollout={"max_new_tokens": MAX_NEW}, steps=1, checkpoint_every=0
)
CONTEXT = BYTE_LEVEL_CONTEXT["tiny-dense"]


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    return job_settings(sqlite_url, tmp_path, model_roots=(tmp_path / "models",))


@pytest.fixture
def http(settings) -> TestClient:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def headers(http) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = http.post("/v1/keys", json={"project": "p", "name": "k"}, headers=admin)
    return {"Authorization": f"Bearer {r.json()['key']}"}


REWARD = {"type": "builtin", "verifier": "exact_match"}


def _dataset(*texts: str) -> dict:
    return {"type": "dataset", "prompts": [{"text": t, "reference": "1"} for t in texts]}


@pytest.mark.parametrize("name", sorted(BYTE_LEVEL_CONTEXT))
def test_the_servers_contexts_are_the_tiny_models_own(name, tmp_path) -> None:
    loaded = load_model(name, cache_dir=tmp_path)
    assert loaded.model.config.max_position_embeddings == BYTE_LEVEL_CONTEXT[name]
    text = "héllo wörld ✓"  # multi-byte characters: still a token per byte at least
    assert len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"]) >= len(text.encode())


def test_a_prompt_over_the_context_is_422_at_submission(http, headers, tmp_path) -> None:
    fits, over = "x" * (CONTEXT - MAX_NEW - 40), "é" * ((CONTEXT - MAX_NEW) // 2 + 1)
    body = {"config": CONFIG, "prompts": _dataset("1 + 1 =", over), "reward": REWARD}
    r = http.post("/v1/jobs", json=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "prompts", "prompts", 1, "text"]
    assert f"context of {CONTEXT} tokens" in r.json()["detail"]
    body = {"config": CONFIG, "prompts": _dataset(fits), "reward": REWARD}
    ok = http.post("/v1/jobs", json=body, headers=headers)
    assert ok.status_code == 201, ok.text

    lines = (
        f'{{"text": "{fits}", "reference": "1"}}\n{{"text": "{over}", "reference": "1"}}\n'.encode()
    )
    upload = http.post("/v1/files", files={"file": ("p.jsonl", lines)}, headers=headers).json()
    by_file = {
        "config": CONFIG,
        "prompts": {"type": "dataset", "file_id": upload["id"]},
        "reward": REWARD,
    }
    r = http.post("/v1/jobs", json=by_file, headers=headers)
    assert r.status_code == 422 and "line 2" in r.json()["detail"], r.text

    client_job = {"config": CONFIG, "prompts": {"type": "client"}, "reward": {"type": "external"}}
    job_id = http.post("/v1/jobs", json=client_job, headers=headers).json()["id"]
    batch = {"prompts": [{"text": fits}, {"text": over}]}
    r = http.post(f"/v1/jobs/{job_id}/prompts", json=batch, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "prompts", 1, "text"]


def test_the_worker_fails_a_prompt_the_api_could_not_measure(
    http, headers, settings, tmp_path
) -> None:
    folder = tmp_path / "models" / "tiny-local"
    loaded = load_model("tiny-dense", cache_dir=tmp_path / "cache")
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    config = {**CONFIG, "model": {"name": str(folder)}}
    long = "x" * (3 * CONTEXT)
    body = {"config": config, "prompts": _dataset("1 + 1 =", long), "reward": REWARD}
    r = http.post("/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text  # a local model: the API has no tokenizer for it
    job_id = r.json()["id"]

    assert run_job(job_id, settings).status == "failed"
    job = http.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["error"].startswith("PromptTooLong after step 0: a prompt is ")
    assert f"context of {CONTEXT} tokens" in job["error"] and "'xxxx" in job["error"]
    rollouts = http.get(f"/v1/jobs/{job_id}/rollouts", headers=headers).json()["data"]
    assert rollouts == []  # it failed before generating anything
