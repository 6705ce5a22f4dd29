"""Contract tests of /v1/jobs: creation and its validation, listing, controls, idempotency."""

from __future__ import annotations

import json

import pytest


def test_create_job_returns_secrets_and_enqueues_run_job(
    job_body, client, project_key, settings
) -> None:
    headers = project_key("alpha")
    r = client.post("/v1/jobs", json=job_body(name="first"), headers=headers)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued"
    assert job["name"] == "first"
    assert job["steps"] == 2
    assert job["reward_token"].startswith("keel_rt_")
    assert job["reward"]["deadline_s"] == settings.reward_deadline_s
    # The broker folder holds exactly one keel.run_job message carrying only the job id.
    messages = [p for p in settings.broker_dir.iterdir() if p.is_file()]
    assert len(messages) == 1
    envelope = json.loads(messages[0].read_text())
    assert envelope["headers"]["task"] == "keel.run_job"
    assert envelope["headers"]["expires"] is not None
    assert job["id"] in envelope["headers"]["argsrepr"]
    # Secrets are shown once: retrieve has neither.
    again = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert "reward_token" not in again and "webhook_secret" not in again


def test_webhook_job_gets_a_generated_secret_not_stored_in_config(
    job_body, client, project_key
) -> None:
    headers = project_key("alpha")
    body = job_body(reward={"type": "webhook", "url": "http://127.0.0.1:9/hook"})
    created = client.post("/v1/jobs", json=body, headers=headers).json()
    assert created["webhook_secret"].startswith("whsec_")
    assert "secret" not in created["reward"]


@pytest.mark.parametrize(
    ("override", "loc_part", "phrase"),
    [
        ({"config": {"bogus": 1}}, "bogus", "Extra inputs are not permitted"),
        ({"config": {"steps": "many"}}, "steps", "valid integer"),
        ({"config": {"algorithm": {"name": "ppo2"}}}, "algorithm", "minirl"),
        ({"config": {"group_size": 1}}, "config", "group_size=1"),
        ({"config": {"num_minibatches": 3}}, "config", "does not divide"),
        (
            {"config": {"model": {"name": "tiny-dense"}, "routing_replay": "R3"}},
            "routing_replay",
            "dense",
        ),
        ({"config": {"model": {"name": "no-such-model"}}}, "name", "tiny-moe"),
        ({"reward": {"type": "carrier-pigeon"}}, "reward", "webhook"),
        ({"reward": {"type": "builtin", "verifier": "regex"}}, "builtin", "pattern"),
        (
            {"reward": {"type": "builtin", "verifier": "regex", "pattern": "("}},
            "builtin",
            "not a regular expression",
        ),
        (
            {"reward": {"type": "builtin", "verifier": "regex", "pattern": r"(a)\1"}},
            "pattern",
            "RE2",
        ),
        (
            {"reward": {"type": "builtin", "verifier": "regex", "pattern": r"a(?=b)"}},
            "pattern",
            "RE2",
        ),
    ],
)
def test_impossible_or_malformed_jobs_are_422_naming_the_field(
    job_body, client, project_key, override, loc_part, phrase
) -> None:
    r = client.post("/v1/jobs", json=job_body(**override), headers=project_key("alpha"))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "validation_error"
    assert any(loc_part in [str(p) for p in e["loc"]] for e in body["errors"]), body
    assert phrase in json.dumps(body), body


def test_list_paginates_newest_first_and_filters_status(job_body, client, project_key) -> None:
    headers = project_key("alpha")
    ids = [client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=headers)
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/jobs", params=params, headers=headers).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == ids[::-1]
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}, headers=headers).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    bad = client.get("/v1/jobs", params={"status": "sleeping"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
    assert client.get("/v1/jobs", params={"limit": 0}, headers=headers).status_code == 422


def test_controls_of_a_job_nobody_runs(job_body, client, project_key) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/pause", headers=headers).json()["status"] == "paused"
    assert client.post(f"/v1/jobs/{job_id}/resume", headers=headers).json()["status"] == "queued"
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).json()["status"] == "cancelled"
    r = client.post(f"/v1/jobs/{job_id}/resume", headers=headers)
    assert r.status_code == 409
    assert r.json()["code"] == "conflict"
    assert r.json()["state"]["status"] == "cancelled"


def test_resume_of_a_queued_job_enqueues_it_again(job_body, client, project_key, settings):
    """A queued job whose broker message was lost is started again by `resume`."""
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    for message in [p for p in settings.broker_dir.iterdir() if p.is_file()]:
        message.unlink()  # the broker lost it
    assert client.post(f"/v1/jobs/{job_id}/resume", headers=headers).json()["status"] == "queued"
    messages = [p for p in settings.broker_dir.iterdir() if p.is_file()]
    assert len(messages) == 1
    assert job_id in json.loads(messages[0].read_text())["headers"]["argsrepr"]


def test_controls_of_a_running_job_are_requests_for_the_worker(
    job_body, client, project_key, sessions
):
    from keel_server.db import jobs as jobs_db
    from keel_server.db import session_scope

    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    with session_scope(sessions) as s:
        assert jobs_db.take_lease(s, job_id, "w1", lease_timeout_s=60).acquired
    paused = client.post(f"/v1/jobs/{job_id}/pause", headers=headers).json()
    assert (paused["status"], paused["requested"]) == ("running", "pause")
    resumed = client.post(f"/v1/jobs/{job_id}/resume", headers=headers).json()
    assert (resumed["status"], resumed["requested"]) == ("running", None)
    cancel = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).json()
    assert (cancel["status"], cancel["requested"]) == ("running", "cancel")
    with session_scope(sessions) as s:
        assert jobs_db.heartbeat(s, job_id, "w1") == "cancel"
        assert jobs_db.finish_job(s, job_id, "w1", "cancelled")
    final = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert (final["status"], final["requested"]) == ("cancelled", None)
    assert final["finished_at"] is not None


def test_idempotency_key_returns_the_first_job(job_body, client, project_key, settings) -> None:
    headers = project_key("alpha") | {"Idempotency-Key": "abc-1"}
    first = client.post("/v1/jobs", json=job_body(), headers=headers)
    second = client.post("/v1/jobs", json=job_body(), headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert len([p for p in settings.broker_dir.iterdir() if p.is_file()]) == 1


def test_dataset_prompts_inline_and_uploaded(job_body, client, project_key) -> None:
    headers = project_key("alpha")
    inline = [{"text": "1+1=", "reference": "2"}, {"text": "2+2=", "reference": "4"}]
    body = job_body(
        prompts={"type": "dataset", "prompts": inline},
        reward={"type": "builtin", "verifier": "numeric"},
    )
    job = client.post("/v1/jobs", json=body, headers=headers).json()
    assert job["num_prompts"] == 2
    assert job["prompts"] == {"type": "dataset"}
    listed = client.get(f"/v1/jobs/{job['id']}/prompts", headers=headers).json()
    assert [(p["index"], p["reference"]) for p in listed["data"]] == [(0, "2"), (1, "4")]

    lines = "\n".join(json.dumps({"text": f"{i}+1=", "reference": str(i + 1)}) for i in range(3))
    files = {"file": ("p.jsonl", lines.encode(), "application/jsonl")}
    up = client.post("/v1/files", files=files, headers=headers)
    assert up.status_code == 201, up.text
    assert up.json()["num_prompts"] == 3
    body["prompts"] = {"type": "dataset", "file_id": up.json()["id"]}
    job2 = client.post("/v1/jobs", json=body, headers=headers).json()
    assert job2["num_prompts"] == 3

    bad = {"file": ("p.jsonl", b'{"text": "ok"}\n{"txt": "typo"}\n', "application/jsonl")}
    r = client.post("/v1/files", files=bad, headers=headers)
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"][-1] == "line 2"


def test_reference_verifier_needs_references(job_body, client, project_key) -> None:
    body = job_body(
        prompts={"type": "dataset", "prompts": [{"text": "1+1="}]},
        reward={"type": "builtin", "verifier": "exact_match"},
    )
    r = client.post("/v1/jobs", json=body, headers=project_key("alpha"))
    assert r.status_code == 422
    assert "reference" in r.json()["detail"]


@pytest.mark.parametrize("verifier", ["exact_match", "numeric", "math_verify"])
def test_every_reference_verifier_is_selectable_and_needs_references(
    job_body, client, project_key, verifier
) -> None:
    headers = project_key("alpha")
    reward = {"type": "builtin", "verifier": verifier}
    missing = job_body(prompts={"type": "dataset", "prompts": [{"text": "1+1="}]}, reward=reward)
    assert client.post("/v1/jobs", json=missing, headers=headers).status_code == 422
    prompts = {"type": "dataset", "prompts": [{"text": "1+1=", "reference": "2"}]}
    r = client.post("/v1/jobs", json=job_body(prompts=prompts, reward=reward), headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["reward"]["verifier"] == verifier


def test_client_prompt_batches(job_body, client, project_key) -> None:
    headers = project_key("alpha")
    body = job_body(prompts={"type": "client"}, reward={"type": "external"})
    job_id = client.post("/v1/jobs", json=body, headers=headers).json()["id"]
    batch = {"prompts": [{"text": "a"}, {"text": "b"}]}
    r1 = client.post(f"/v1/jobs/{job_id}/prompts", json=batch, headers=headers)
    assert r1.json() == {"job_id": job_id, "accepted": 2, "total": 2}
    keyed = headers | {"Idempotency-Key": "batch-7"}
    r2 = client.post(f"/v1/jobs/{job_id}/prompts", json=batch, headers=keyed)
    r3 = client.post(f"/v1/jobs/{job_id}/prompts", json=batch, headers=keyed)
    assert r2.json()["total"] == 4 and r3.json()["total"] == 4
    page = client.get(f"/v1/jobs/{job_id}/prompts", params={"limit": 3}, headers=headers).json()
    assert [p["text"] for p in page["data"]] == ["a", "b", "a"] and page["next_cursor"] == "3"
    task_job = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    r4 = client.post(f"/v1/jobs/{task_job}/prompts", json=batch, headers=headers)
    assert r4.status_code == 409
