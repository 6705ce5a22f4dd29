"""Idempotency keys (hardening issue item 10) and per-project quotas (item 5).

The same key with the same request answers what the first call answered, the job's secrets
included (kept sealed for exactly this); the same key with a different request is a 409 that
names the key. Quotas answer 429 with `Retry-After`."""

from __future__ import annotations

import stat

from fastapi.testclient import TestClient

from keel_server.api.app import create_app
from keel_server.platform.security import SECRET_KEY_FILE


def _messages(settings) -> int:
    return len([p for p in settings.broker_dir.iterdir() if p.is_file()])


def test_a_replay_returns_the_first_answer_secrets_included(
    job_body, client, project_key, settings
) -> None:
    headers = project_key("alpha") | {"Idempotency-Key": "job-1"}
    body = job_body(reward={"type": "webhook", "url": "http://127.0.0.1:9/hook"})
    first = client.post("/v1/jobs", json=body, headers=headers)
    second = client.post("/v1/jobs", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["reward_token"].startswith("keel_rt_")
    assert first.json()["webhook_secret"].startswith("whsec_")
    for field in ("id", "reward_token", "webhook_secret", "config", "reward", "status"):
        assert second.json()[field] == first.json()[field], field
    assert _messages(settings) == 1  # enqueued once
    # The replayed token works: it authenticates as the job's reward token.
    token = second.json()["reward_token"]
    whoami = client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert whoami.json()["job_id"] == first.json()["id"]


def test_the_same_key_with_another_body_is_409_naming_the_key(
    job_body, client, project_key, settings
) -> None:
    headers = project_key("alpha") | {"Idempotency-Key": "job-2"}
    first = client.post("/v1/jobs", json=job_body(), headers=headers)
    other = client.post("/v1/jobs", json=job_body(config={"steps": 3}), headers=headers)
    assert other.status_code == 409, other.text
    assert other.json()["code"] == "idempotency_conflict"
    assert "job-2" in other.json()["detail"]
    assert other.json()["state"] == {"idempotency_key": "job-2", "job_id": first.json()["id"]}
    assert _messages(settings) == 1
    # Keys are per project: another project may use the same key for its own job.
    elsewhere = client.post(
        "/v1/jobs",
        json=job_body(config={"steps": 3}),
        headers=project_key("beta") | {"Idempotency-Key": "job-2"},
    )
    assert elsewhere.status_code == 201


def test_prompt_batch_replays_and_conflicts(job_body, client, project_key) -> None:
    headers = project_key("alpha")
    body = job_body(prompts={"type": "client"}, reward={"type": "external"})
    job_id = client.post("/v1/jobs", json=body, headers=headers).json()["id"]
    url = f"/v1/jobs/{job_id}/prompts"
    keyed = headers | {"Idempotency-Key": "batch-1"}
    first = client.post(url, json={"prompts": [{"text": "a"}, {"text": "b"}]}, headers=keyed)
    client.post(url, json={"prompts": [{"text": "c"}]}, headers=headers)
    again = client.post(url, json={"prompts": [{"text": "a"}, {"text": "b"}]}, headers=keyed)
    assert first.json() == again.json() == {"job_id": job_id, "accepted": 2, "total": 2}
    other = client.post(url, json={"prompts": [{"text": "x"}]}, headers=keyed)
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
    assert "batch-1" in other.json()["detail"]
    texts = [p["text"] for p in client.get(url, headers=headers).json()["data"]]
    assert texts == ["a", "b", "c"]


def test_secrets_are_sealed_at_rest(job_body, client, project_key, settings, sessions) -> None:
    from keel_server.db import jobs as jobs_db
    from keel_server.db import session_scope

    body = job_body(
        reward={
            "type": "webhook",
            "url": "http://127.0.0.1:9/hook",
            "secret": "my-webhook-secret-0123",
        }
    )
    created = client.post("/v1/jobs", json=body, headers=project_key("alpha")).json()
    with session_scope(sessions) as s:
        row = jobs_db.get_job(s, created["id"])
        stored = (row.webhook_secret, row.reward_token_sealed)
    assert "my-webhook-secret-0123" not in stored[0]
    assert created["reward_token"] not in stored[1]
    key_file = settings.home / SECRET_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_active_jobs_per_project_are_limited_with_retry_after(
    job_body, settings, project_key
) -> None:
    limited = settings.model_copy(update={"max_active_jobs_per_project": 2})
    with TestClient(create_app(limited)) as client:
        admin = {"Authorization": f"Bearer {settings.admin_key}"}
        key = client.post("/v1/keys", json={"project": "alpha"}, headers=admin).json()["key"]
        headers = {"Authorization": f"Bearer {key}"}
        ids = [
            client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"] for _ in range(2)
        ]
        third = client.post("/v1/jobs", json=job_body(), headers=headers)
        assert third.status_code == 429 and third.json()["code"] == "rate_limited"
        assert int(third.headers["retry-after"]) >= 1
        client.post(f"/v1/jobs/{ids[0]}/cancel", headers=headers)
        assert client.post("/v1/jobs", json=job_body(), headers=headers).status_code == 201


def test_the_request_rate_per_project_is_limited(settings) -> None:
    slow = settings.model_copy(update={"rate_limit_per_s": 0.5, "rate_limit_burst": 3})
    with TestClient(create_app(slow)) as client:
        admin = {"Authorization": f"Bearer {settings.admin_key}"}
        key = client.post("/v1/keys", json={"project": "alpha"}, headers=admin).json()["key"]
        headers = {"Authorization": f"Bearer {key}"}
        codes = [client.get("/v1/jobs", headers=headers).status_code for _ in range(3)]
        assert codes == [200, 200, 200]  # the burst
        limited = client.get("/v1/jobs", headers=headers)
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        # Another project has its own bucket.
        other = client.post("/v1/keys", json={"project": "beta"}, headers=admin).json()["key"]
        r = client.get("/v1/jobs", headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 200
