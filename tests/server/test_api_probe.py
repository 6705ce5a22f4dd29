"""The outside probe of the hardening issue (items 9 and 11), kept as tests: every input that
answered 500, or was coerced or stored wrongly, is now a 4xx in the error envelope. They run on
SQLite and on PostgreSQL, whose INTEGER and text columns are the stricter ones."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from keel_server.db import session_scope

BIG = 2**63  # past int64; anything past 2^31 - 1 overflows an INTEGER column
DIGIT_LOOKALIKES = ["²", "١", "𝟘"]  # str.isdigit() is true for each


def _assert_4xx(r, status: int = 422) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"code", "detail"}, body


def test_an_empty_idempotency_key_is_422(job_body, client, project_key) -> None:
    headers = project_key("alpha") | {"Idempotency-Key": ""}
    for _ in range(2):
        _assert_4xx(client.post("/v1/jobs", json=job_body(), headers=headers))


@pytest.mark.parametrize(
    "config",
    [
        {"steps": BIG},
        {"steps": 2**31},
        {"seed": 10**30},
        {"eval_every": BIG},
        {"task": {"split_seed": BIG}},
        {"rollout": {"max_new_tokens": BIG}},
    ],
)
def test_huge_integers_in_a_job_are_422(job_body, client, project_key, config) -> None:
    _assert_4xx(client.post("/v1/jobs", json=job_body(config=config), headers=project_key("a")))


@pytest.mark.parametrize("bad", [str(BIG), str(2**31), "9" * 5000, *DIGIT_LOOKALIKES, "1.2", ""])
def test_cursors_that_this_server_never_returned_are_422(
    job_body, client, project_key, bad
) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    for path, cursor in [
        (f"/v1/jobs/{job_id}/prompts", bad),
        (f"/v1/jobs/{job_id}/checkpoints", bad),
        (f"/v1/jobs/{job_id}/rollouts", f"{bad}.0.0"),
        (f"/v1/jobs/{job_id}/rollouts", f"0.0.{bad}"),
        ("/v1/jobs", f"job_{bad}"),
    ]:
        r = client.get(path, params={"cursor": cursor}, headers=headers)
        if path == "/v1/jobs" and bad.isascii() and r.status_code == 200:
            continue  # a job-id cursor is compared as text: any ASCII id is a valid position
        _assert_4xx(r)


@pytest.mark.parametrize("param", ["step_min", "step_max"])
@pytest.mark.parametrize("value", [BIG, 2**31, -1])
def test_huge_step_parameters_are_422(job_body, client, project_key, param, value) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    _assert_4xx(client.get(f"/v1/jobs/{job_id}/metrics", params={param: value}, headers=headers))
    r = client.get(f"/v1/jobs/{job_id}/rollouts", params={"step": value}, headers=headers)
    _assert_4xx(r)


@pytest.mark.parametrize("last_event_id", ["²", "¹³", "9" * 5000, str(BIG), "-1"])
def test_a_bad_last_event_id_is_422_before_the_stream_starts(
    job_body, client, project_key, last_event_id
) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    raw = last_event_id.encode("latin-1")  # header bytes are latin-1: b"\xb2" is "²"
    r = client.get(f"/v1/jobs/{job_id}/events", headers=headers | {"Last-Event-ID": raw})
    _assert_4xx(r)


def test_nul_bytes_in_ids_and_queries_are_4xx(job_body, client, project_key) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    for path in ["/v1/jobs/job%00x", "/v1/rollouts/r%00", "/v1/checkpoints/c%00"]:
        _assert_4xx(client.get(path, headers=headers))
    r = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "a\x00b"}, headers=headers)
    _assert_4xx(r)
    r = client.post(
        "/v1/rewards", json={"rewards": [{"rollout_id": "r\x00", "value": 1}]}, headers=headers
    )
    _assert_4xx(r)


def test_an_unexpected_error_answers_the_envelope_and_closes_the_connection(
    job_body, settings, sessions
) -> None:
    from fastapi.testclient import TestClient

    from keel_server.api.app import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        r = client.post(
            "/v1/keys",
            json={"project": "alpha"},
            headers={"Authorization": f"Bearer {settings.admin_key}"},
        )
        headers = {"Authorization": f"Bearer {r.json()['key']}"}
        job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
        with session_scope(sessions) as session:  # a real failure: the table is gone
            session.execute(text("DROP TABLE metrics"))
        r = client.get(f"/v1/jobs/{job_id}/metrics", headers=headers)
    assert r.status_code == 500
    assert r.json()["code"] == "internal_error"
    assert r.headers["connection"] == "close"


# ---- item 11: strict, finite numbers; no NUL in stored text --------------------------------


def _raw_post(client, path: str, raw: str, headers: dict):
    headers = headers | {"Content-Type": "application/json"}
    return client.post(path, content=raw.encode(), headers=headers)


@pytest.mark.parametrize("value", ["true", '"1.0"', "NaN", "Infinity", "-Infinity", "1e400"])
def test_a_reward_must_be_a_finite_json_number(
    job_body, client, project_key, add_rollouts, sessions, value
) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    rollout_id = add_rollouts(job_id)[0]
    _assert_4xx(
        _raw_post(client, f"/v1/rollouts/{rollout_id}/reward", f'{{"value": {value}}}', headers)
    )
    batch = f'{{"rewards": [{{"rollout_id": "{rollout_id}", "value": {value}}}]}}'
    _assert_4xx(_raw_post(client, "/v1/rewards", batch, headers))
    rollout = client.get(f"/v1/rollouts/{rollout_id}", headers=headers).json()
    assert (rollout["status"], rollout["reward"]) == ("awaiting_reward", None)


@pytest.mark.parametrize(
    ("fragment", "where"),
    [
        ('"config": {"steps": true}', "steps"),
        ('"config": {"steps": "2"}', "steps"),
        ('"config": {"optimizer": {"lr": "0.001"}}', "lr"),
        ('"config": {"rollout": {"temperature": NaN}}', "temperature"),
        ('"config": {"algorithm": {"name": "minirl", "eps_high": Infinity}}', "eps_high"),
        ('"config": {"optimizer": {"betas": [0.9, NaN]}}', "betas"),
        ('"reward": {"type": "external", "min_value": NaN}', "min_value"),
        ('"reward": {"type": "external", "deadline_s": Infinity}', "deadline_s"),
        ('"reward": {"type": "external", "max_value": true}', "max_value"),
    ],
)
def test_job_numbers_are_strict_and_finite(client, project_key, fragment, where) -> None:
    base = '"model": {"name": "tiny-moe"}, "steps": 2, "prompts_per_step": 2, "group_size": 2'
    raw = "{" + fragment.replace('"config": {', '"config": {' + base + ", ") + "}"
    if '"config"' not in fragment:
        raw = "{" + '"config": {' + base + "}, " + fragment + "}"
    r = _raw_post(client, "/v1/jobs", raw, project_key("alpha"))
    _assert_4xx(r)
    assert where in r.json()["detail"], r.json()


@pytest.mark.parametrize(
    "override",
    [
        {"name": "a\x00b"},
        {
            "prompts": {"type": "dataset", "prompts": [{"text": "2+2\x00", "reference": "4"}]},
            "reward": {"type": "builtin", "verifier": "exact_match"},
        },
        {
            "config": {
                "task": {
                    "name": "dataset",
                    "items": [{"prompt": "p\x00", "answer": "1"}, {"prompt": "q", "answer": "2"}],
                }
            }
        },
    ],
)
def test_nul_bytes_in_stored_text_are_422(job_body, client, project_key, override) -> None:
    _assert_4xx(client.post("/v1/jobs", json=job_body(**override), headers=project_key("alpha")))


def test_nul_bytes_in_prompt_batches_and_key_names_are_422(
    job_body, client, project_key, admin
) -> None:
    headers = project_key("alpha")
    body = job_body(prompts={"type": "client"}, reward={"type": "external"})
    job_id = client.post("/v1/jobs", json=body, headers=headers).json()["id"]
    r = client.post(
        f"/v1/jobs/{job_id}/prompts", json={"prompts": [{"text": "a\x00"}]}, headers=headers
    )
    _assert_4xx(r)
    _assert_4xx(client.post("/v1/keys", json={"project": "p\x00"}, headers=admin))


# ---- items 12 and 13: checked at creation; no rewards after the end ------------------------


def test_an_unknown_task_is_422_at_creation(job_body, client, project_key) -> None:
    r = client.post(
        "/v1/jobs",
        json=job_body(config={"task": {"name": "subtraction"}}),
        headers=project_key("alpha"),
    )
    _assert_4xx(r)
    assert "addition" in r.json()["detail"]


@pytest.mark.parametrize("final", ["cancelled", "succeeded", "failed"])
def test_a_finished_job_takes_no_rewards(
    job_body, client, project_key, add_rollouts, sessions, final
) -> None:
    from keel_server.db import jobs as jobs_db

    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    ids = add_rollouts(job_id)
    with session_scope(sessions) as s:
        assert jobs_db.take_lease(s, job_id, "w1", lease_timeout_s=60).acquired
        assert jobs_db.finish_job(s, job_id, "w1", final)
    r = client.post(f"/v1/rollouts/{ids[0]}/reward", json={"value": 1.0}, headers=headers)
    _assert_4xx(r, 409)
    assert final in r.json()["detail"] and r.json()["state"]["status"] == final
    batch = client.post(
        "/v1/rewards", json={"rewards": [{"rollout_id": ids[1], "value": 1.0}]}, headers=headers
    ).json()
    assert batch["results"][0]["error"]["state"]["status"] == final
    assert client.get(f"/v1/rollouts/{ids[0]}", headers=headers).json()["reward"] is None


# ---- item 3: webhook SSRF ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1/jobs",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/hook",
        "http://[::1]/hook",
        "http://localhost:9/hook",
    ],
)
def test_a_webhook_to_a_non_public_address_is_422_by_default(job_body, settings, url) -> None:
    from fastapi.testclient import TestClient

    from keel_server.api.app import create_app

    production = settings.model_copy(update={"webhook_allow": ""})
    admin = {"Authorization": f"Bearer {settings.admin_key}"}
    with TestClient(create_app(production)) as client:
        r = client.post(
            "/v1/jobs", json=job_body(reward={"type": "webhook", "url": url}), headers=admin
        )
    _assert_4xx(r)
    assert r.json()["errors"][0]["loc"] == ["body", "reward", "url"]
    assert "KEEL_WEBHOOK_ALLOW" in r.json()["detail"] or "resolve" in r.json()["detail"]
