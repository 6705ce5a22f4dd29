"""Episodes of agent jobs at the API, without a worker: claims (each episode once, never from
another project's or a non-agent job), the episode key's scope, and the checks a model call
passes before it is forwarded (an ended or expired episode is a 409, a job no worker serves a
503), all in OpenAI's error envelope."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from keel_server.db import session_scope, utcnow
from keel_server.db.rollouts import NewRollout, record_rollouts

TASKS = [{"q": 1}, {"q": 2}]


@pytest.fixture
def agent_job(client, project_key, job_body, sessions):
    """An agent job of project `alpha` with one step of 2 tasks × 2 episodes opened, the second
    task's already past its deadline; returns (headers, job id, episode ids)."""
    headers = project_key("alpha")
    body = job_body(prompts={"type": "agent", "tasks": TASKS}, reward={"type": "external"})
    job = client.post("/v1/jobs", json=body, headers=headers).json()
    episodes = []
    with session_scope(sessions) as session:
        for g, deadline_s in enumerate((600.0, -1.0)):
            rows = record_rollouts(
                session,
                job["id"],
                step=1,
                policy_version=0,
                deadline_at=utcnow() + timedelta(seconds=deadline_s),
                rollouts=[NewRollout(g, s, json.dumps(TASKS[g]), "", 0) for s in range(2)],
            )
            episodes += [r.id for r in rows]
    return headers, job["id"], episodes


def _claim(client, headers, job_id: str, n: int = 8):
    return client.post(
        f"/v1/jobs/{job_id}/episodes/claim", json={"max_episodes": n}, headers=headers
    )


def _call(client, key: str, **body):
    body = {"model": "policy", "messages": [{"role": "user", "content": "hi"}], **body}
    return client.post(
        "/v1/openai/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )


def test_each_open_episode_is_claimed_once_with_its_task_and_key(client, agent_job):
    headers, job_id, episodes = agent_job
    first = _claim(client, headers, job_id, n=1).json()["data"]
    rest = _claim(client, headers, job_id).json()["data"]
    again = _claim(client, headers, job_id).json()["data"]
    claimed = first + rest
    assert [e["id"] for e in claimed] == episodes[:2]  # the expired ones are never handed out
    assert again == []
    assert [e["task"] for e in claimed] == [TASKS[0], TASKS[0]]
    assert all(e["api_key"].startswith("keel_ep_") for e in claimed)
    assert claimed[0]["base_url"].endswith("/v1/openai")
    assert len({e["api_key"] for e in claimed}) == 2


def test_claims_are_refused_for_other_projects_and_other_kinds_of_job(
    client, agent_job, project_key, job_body
):
    headers, job_id, _ = agent_job
    assert _claim(client, project_key("beta"), job_id).status_code == 404
    plain = client.post("/v1/jobs", json=job_body(), headers=headers).json()
    refused = _claim(client, headers, plain["id"])
    assert (refused.status_code, refused.json()["code"]) == (409, "conflict")


def test_an_episode_key_reaches_its_own_episode_only(client, agent_job):
    headers, job_id, episodes = agent_job
    mine, other = _claim(client, headers, job_id).json()["data"]
    key = {"Authorization": f"Bearer {mine['api_key']}"}
    assert client.get(f"/v1/rollouts/{mine['id']}", headers=key).status_code == 200
    assert client.get(f"/v1/rollouts/{other['id']}", headers=key).status_code == 404
    assert (
        client.post(
            f"/v1/rollouts/{other['id']}/reward", json={"value": 1}, headers=key
        ).status_code
        == 404
    )
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/rollouts", "/v1/jobs"):
        assert client.get(path, headers=key).status_code == 403, path
    assert _claim(client, key, job_id).status_code == 403
    forged = mine["api_key"][:-2] + ("AA" if not mine["api_key"].endswith("AA") else "BB")
    assert _call(client, forged).status_code == 401
    made_up = "keel_ep_" + episodes[2] + ".not-its-mac"
    assert _call(client, made_up).status_code == 401


def test_a_model_call_is_checked_before_it_is_forwarded(client, agent_job, sessions):
    headers, job_id, episodes = agent_job
    mine, _ = _claim(client, headers, job_id).json()["data"]
    # The job is queued: no worker serves it yet.
    waiting = _call(client, mine["api_key"])
    assert waiting.status_code == 503 and waiting.headers["Retry-After"] == "1"
    assert waiting.json()["error"]["code"] == "policy_unavailable"
    # A key of an expired episode (derived as a claim would have made it).
    from keel_server.platform.security import episode_key, sealing_key

    expired_key = episode_key(sealing_key(client.app.state.ctx.settings), episodes[2])
    ended = _call(client, expired_key)
    assert (ended.status_code, ended.json()["error"]["code"]) == (409, "episode_ended")
    # A rewarded episode takes no more calls.
    key = {"Authorization": f"Bearer {mine['api_key']}"}
    assert (
        client.post(f"/v1/rollouts/{mine['id']}/reward", json={"value": 1}, headers=key).status_code
        == 200
    )
    rewarded = _call(client, mine["api_key"])
    assert (rewarded.status_code, rewarded.json()["error"]["code"]) == (409, "episode_ended")


def test_refused_bodies_name_the_field(client, agent_job, sessions):
    headers, job_id, _ = agent_job
    mine, _ = _claim(client, headers, job_id).json()["data"]
    from keel_server.db.models import Job

    with session_scope(sessions) as session:  # as if a worker served the job
        job = session.get(Job, job_id)
        job.status, job.serve_url = "running", "http://127.0.0.1:9"
    for body, where in (
        ({"stream": True}, "stream"),
        ({"n": 2}, "n"),
        ({"messages": []}, "messages"),
        ({"stop": ["\n"]}, "stop"),
    ):
        refused = _call(client, mine["api_key"], **body)
        assert refused.status_code == 400, body
        assert refused.json()["error"]["code"] == "invalid_request"
        assert where in refused.json()["error"]["message"], refused.json()
    # A well-formed call to a worker that is not there: 503, retry.
    gone = _call(client, mine["api_key"])
    assert (gone.status_code, gone.json()["error"]["code"]) == (503, "policy_unavailable")
