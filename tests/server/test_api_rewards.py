"""Rewards contract: idempotent per rollout, 409 on a different value or past the deadline
(with the rollout's state), 422 for non-finite or out-of-range values, per-item batch results."""

from __future__ import annotations

import time
from datetime import datetime


def _job(client, headers, job_body, **reward) -> str:
    body = job_body(reward={"type": "external", **reward})
    return client.post("/v1/jobs", json=body, headers=headers).json()["id"]


def test_reward_is_idempotent_and_never_overwritten(job_body, client, project_key, add_rollouts):
    headers = project_key("alpha")
    rollout_id = add_rollouts(_job(client, headers, job_body))[0]
    url = f"/v1/rollouts/{rollout_id}/reward"
    first = client.post(url, json={"value": 0.75}, headers=headers)
    assert first.status_code == 200
    assert (first.json()["status"], first.json()["reward"], first.json()["created"]) == (
        "rewarded",
        0.75,
        True,
    )
    again = client.post(url, json={"value": 0.75}, headers=headers)
    assert again.status_code == 200 and again.json()["created"] is False
    other = client.post(url, json={"value": 0.0}, headers=headers)
    assert other.status_code == 409
    body = other.json()
    assert body["code"] == "reward_conflict"
    shown = client.get(f"/v1/rollouts/{rollout_id}", headers=headers).json()
    assert (shown["status"], shown["reward"]) == ("rewarded", 0.75)
    # The conflict's state is the rollout's own, deadline included (the instant the API shows).
    state = dict(body["state"])
    deadline_at = datetime.fromisoformat(state.pop("deadline_at"))
    assert state == {"rollout_id": rollout_id, "status": "rewarded", "reward": 0.75}
    assert deadline_at == datetime.fromisoformat(shown["deadline_at"])


def test_non_finite_and_out_of_range_rewards_are_422(
    job_body, client, project_key, add_rollouts
) -> None:
    headers = project_key("alpha") | {"Content-Type": "application/json"}
    job_id = _job(client, headers, job_body, min_value=0.0, max_value=1.0)
    url = f"/v1/rollouts/{add_rollouts(job_id)[0]}/reward"
    for raw in (b'{"value": NaN}', b'{"value": Infinity}', b'{"value": 1e999}'):
        r = client.post(url, content=raw, headers=headers)
        assert r.status_code == 422, raw
        assert r.json()["errors"][0]["loc"] == ["body", "value"]
    r = client.post(url, json={"value": 1.5}, headers=headers)
    assert r.status_code == 422 and "max_value" in r.json()["detail"]
    r = client.post(url, json={"value": "high"}, headers=headers)
    assert r.status_code == 422
    assert client.get(url.removesuffix("/reward"), headers=headers).json()["status"] == (
        "awaiting_reward"
    )


def test_past_deadline_is_409_and_the_rollout_is_expired(
    job_body, client, project_key, add_rollouts
) -> None:
    headers = project_key("alpha")
    job_id = _job(client, headers, job_body)
    rollout_id = add_rollouts(job_id, deadline_s=0.05)[0]
    time.sleep(0.1)
    r = client.post(f"/v1/rollouts/{rollout_id}/reward", json={"value": 1.0}, headers=headers)
    assert r.status_code == 409
    assert r.json()["code"] == "rollout_not_awaiting_reward"
    assert r.json()["state"]["status"] == "expired"
    assert r.json()["state"]["reward"] is None  # never silently 0
    listed = client.get(
        f"/v1/jobs/{job_id}/rollouts", params={"status": "expired"}, headers=headers
    )
    assert len(listed.json()["data"]) == 4


def test_a_cancelled_jobs_rollouts_no_longer_await_a_reward(
    job_body, client, project_key, add_rollouts
) -> None:
    headers = project_key("alpha")
    job_id = _job(client, headers, job_body)
    rollout_id = add_rollouts(job_id)[0]
    awaiting = {"status": "awaiting_reward"}
    url = f"/v1/jobs/{job_id}/rollouts"
    assert len(client.get(url, params=awaiting, headers=headers).json()["data"]) == 4
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).json()["status"] == "cancelled"
    assert client.get(url, params=awaiting, headers=headers).json()["data"] == []
    assert len(client.get(url, params={"status": "expired"}, headers=headers).json()["data"]) == 4
    # A late reward hears that the job ended, not that a deadline passed.
    r = client.post(f"/v1/rollouts/{rollout_id}/reward", json={"value": 1.0}, headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "conflict", r.text
    assert "cancelled" in r.json()["detail"] and r.json()["state"]["status"] == "cancelled"


def test_batch_reports_each_item(job_body, client, project_key, add_rollouts) -> None:
    headers = project_key("alpha")
    ids = add_rollouts(_job(client, headers, job_body))
    client.post(f"/v1/rollouts/{ids[1]}/reward", json={"value": 2.0}, headers=headers)
    items = [
        {"rollout_id": ids[0], "value": 1.0},
        {"rollout_id": ids[1], "value": 3.0},
        {"rollout_id": "ro_missing", "value": 1.0},
    ]
    r = client.post("/v1/rewards", json={"rewards": items}, headers=headers)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["ok"] for x in results] == [True, False, False]
    assert results[1]["error"]["code"] == "reward_conflict"
    assert results[2]["error"]["code"] == "not_found"
    nan = client.post(
        "/v1/rewards",
        content=b'{"rewards": [{"rollout_id": "x", "value": NaN}]}',
        headers=headers | {"Content-Type": "application/json"},
    )
    assert nan.status_code == 422


def test_rollout_listing_filters_and_paginates(job_body, client, project_key, add_rollouts):
    headers = project_key("alpha")
    job_id = _job(client, headers, job_body)
    step1, step2 = add_rollouts(job_id, step=1), add_rollouts(job_id, step=2)
    client.post(f"/v1/rollouts/{step1[0]}/reward", json={"value": 1.0}, headers=headers)
    url = f"/v1/jobs/{job_id}/rollouts"
    by_step = client.get(url, params={"step": 2}, headers=headers).json()["data"]
    assert [r["id"] for r in by_step] == step2
    rewarded = client.get(url, params={"status": "rewarded"}, headers=headers).json()["data"]
    assert [r["id"] for r in rewarded] == [step1[0]]
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get(url, params=params, headers=headers).json()
        seen += [r["id"] for r in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == step1 + step2
    one = client.get(f"/v1/rollouts/{step2[3]}", headers=headers).json()
    assert (one["step"], one["group_index"], one["sample_index"], one["token_count"]) == (
        2,
        1,
        1,
        4,
    )
