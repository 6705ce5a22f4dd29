"""Auth contract: 401 without a valid key, 404 (not 403) across projects, reward-token scope,
key management."""

from __future__ import annotations


def test_missing_bad_and_revoked_keys_are_401(client, project_key) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
        assert r.json()["detail"]
    headers = project_key("alpha")
    key_id = client.get("/v1/keys", headers=headers).json()[0]["id"]
    assert client.delete(f"/v1/keys/{key_id}", headers=headers).json()["revoked_at"] is not None
    assert client.get("/v1/jobs", headers=headers).status_code == 401


def test_projects_do_not_see_each_other(job_body, client, project_key, add_rollouts) -> None:
    alpha, beta = project_key("alpha"), project_key("beta")
    job_id = client.post("/v1/jobs", json=job_body(), headers=alpha).json()["id"]
    rollout_id = add_rollouts(job_id)[0]
    for path in (
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/rollouts",
        f"/v1/jobs/{job_id}/metrics",
        f"/v1/jobs/{job_id}/checkpoints",
        f"/v1/rollouts/{rollout_id}",
    ):
        r = client.get(path, headers=beta)
        assert r.status_code == 404, path
        assert r.json()["code"] == "not_found"
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=beta).status_code == 404
    r = client.post(f"/v1/rollouts/{rollout_id}/reward", json={"value": 1.0}, headers=beta)
    assert r.status_code == 404
    assert client.get("/v1/jobs", headers=beta).json()["data"] == []
    assert client.get(f"/v1/jobs/{job_id}", headers=alpha).status_code == 200


def _reward_job_and_another(client, job_body, headers) -> tuple[dict, dict, dict]:
    """(a job with external rewards, another job of the same project, the first one's reward
    token as request headers)."""
    external = job_body(reward={"type": "external"})
    job = client.post("/v1/jobs", json=external, headers=headers).json()
    other = client.post("/v1/jobs", json=job_body(), headers=headers).json()
    return job, other, {"Authorization": f"Bearer {job['reward_token']}"}


def test_reward_token_reads_pending_and_posts_rewards_of_its_job_only(
    job_body, client, project_key, add_rollouts
) -> None:
    job, other, token = _reward_job_and_another(client, job_body, project_key("alpha"))
    mine, theirs = add_rollouts(job["id"]), add_rollouts(other["id"])

    pending = client.get(f"/v1/jobs/{job['id']}/rollouts", headers=token).json()
    assert sorted(r["id"] for r in pending["data"]) == sorted(mine)
    assert client.get(f"/v1/rollouts/{mine[0]}", headers=token).status_code == 200
    ok = client.post(f"/v1/rollouts/{mine[0]}/reward", json={"value": 0.5}, headers=token)
    assert ok.status_code == 200 and ok.json()["created"] is True
    # A rewarded rollout is no longer pending: the token may not read it.
    assert client.get(f"/v1/rollouts/{mine[0]}", headers=token).status_code == 403
    rewarded = {"status": "rewarded"}
    r = client.get(f"/v1/jobs/{job['id']}/rollouts", params=rewarded, headers=token)
    assert r.status_code == 403

    # Outside its job: 404, like a foreign id.
    assert client.get(f"/v1/jobs/{other['id']}/rollouts", headers=token).status_code == 404
    assert client.get(f"/v1/rollouts/{theirs[0]}", headers=token).status_code == 404
    r = client.post(f"/v1/rollouts/{theirs[0]}/reward", json={"value": 1.0}, headers=token)
    assert r.status_code == 404
    # Anything but rollouts and rewards is refused.
    assert client.get(f"/v1/jobs/{job['id']}", headers=token).status_code == 403
    assert client.get("/v1/jobs", headers=token).status_code == 403
    assert client.post("/v1/jobs", json=job_body(), headers=token).status_code == 403
    assert client.post("/v1/keys", json={}, headers=token).status_code == 403


def test_only_admin_creates_keys_for_other_projects(client, project_key, admin) -> None:
    alpha = project_key("alpha")
    own = client.post("/v1/keys", json={"name": "ci"}, headers=alpha)
    assert own.status_code == 201 and own.json()["project"] == "alpha"
    r = client.post("/v1/keys", json={"project": "beta"}, headers=alpha)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    me = client.get("/v1/whoami", headers=admin).json()
    assert me["is_admin"] is True
    listed = client.get("/v1/keys", headers=alpha).json()
    assert len(listed) == 2 and all("key" not in k for k in listed)


def test_a_verified_reward_token_is_remembered_and_still_bound_to_its_job(
    job_body, client, project_key, add_rollouts
) -> None:
    from keel_server.platform.security import hash_secret

    job, other, token = _reward_job_and_another(client, job_body, project_key("alpha"))
    mine, theirs = add_rollouts(job["id"]), add_rollouts(other["id"])
    cache = client.app.state.ctx.reward_tokens
    unknown = {"Authorization": "Bearer keel_rt_" + "x" * 43}

    refused = client.post(f"/v1/rollouts/{mine[0]}/reward", json={"value": 0.5}, headers=unknown)
    assert refused.status_code == 401
    assert cache.get(hash_secret("keel_rt_" + "x" * 43)) is None  # a miss is never remembered
    ok = client.post(f"/v1/rollouts/{mine[0]}/reward", json={"value": 0.5}, headers=token)
    assert ok.json()["created"] is True
    remembered = cache.get(hash_secret(job["reward_token"]))
    assert (remembered.project_id, remembered.job_id) == (job["project_id"], job["id"])
    # From the cache the token still posts only to its own job's rollouts, once per rollout.
    again = client.post(f"/v1/rollouts/{mine[0]}/reward", json={"value": 0.7}, headers=token)
    assert again.status_code == 409 and again.json()["code"] == "reward_conflict"
    r = client.post(f"/v1/rollouts/{theirs[0]}/reward", json={"value": 0.5}, headers=token)
    assert r.status_code == 404
    assert client.get("/v1/jobs", headers=token).status_code == 403


def test_the_reward_token_cache_is_bounded() -> None:
    from keel_server.services.context import Principal, RewardTokenCache

    cache = RewardTokenCache(size=2)
    for name in "abc":
        cache.put(name, Principal("pr", job_id=name))
    assert cache.get("a") is None and cache.get("b") is not None and cache.get("c") is not None
    cache.get("b")  # most recently used: c goes first
    cache.put("d", Principal("pr", job_id="d"))
    assert cache.get("c") is None and cache.get("b") is not None
