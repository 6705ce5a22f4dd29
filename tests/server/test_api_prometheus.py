"""Prometheus `GET /metrics`: scraped like Prometheus would, every value checked against what the
/v1 API says about the same jobs, rollouts and metrics; and the operator's access setting."""

from __future__ import annotations

import math
import os
import secrets

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from keel_server.api.app import create_app
from keel_server.db import jobs as jobs_db
from keel_server.db import session_scope
from keel_server.db.metrics import write_step_metrics
from keel_server.platform.queue import make_producer

REDIS_URL = os.environ.get("KEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")

STEP_METRICS = {
    "reward/mean": 0.625,
    "time/step_s": 3.5,
    "mismatch/kl_k3": 1.5e-3,
    "is/truncated_frac": 0.125,
    "clip/frac": 0.25,
    "clip/frac_pos": 0.0625,
    "clip/frac_neg": 0.1875,
    "train/entropy": 2.0,  # not watched: must not be exported
}


def scrape(client: TestClient, headers: dict[str, str]) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of one scrape."""
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _run(sessions, job_id: str, *, step: int, values: dict[str, float]) -> None:
    """What the worker does: take the lease, write a step's metrics, record the progress."""
    with session_scope(sessions) as s:
        assert jobs_db.take_lease(s, job_id, "w1", lease_timeout_s=60).acquired
        write_step_metrics(s, job_id, step, values)
        jobs_db.record_progress(s, job_id, "w1", step=step, policy_version=step)


def test_scrape_matches_the_api(
    client, admin, project_key, job_body, add_rollouts, sessions
) -> None:
    alpha, beta = project_key("alpha"), project_key("beta")
    reward = {"type": "external", "min_value": 0.0, "max_value": 1.0}
    running = client.post("/v1/jobs", json=job_body(reward=reward), headers=alpha).json()["id"]
    queued = client.post("/v1/jobs", json=job_body(), headers=beta).json()["id"]
    cancelled = client.post("/v1/jobs", json=job_body(), headers=beta).json()["id"]
    assert client.post(f"/v1/jobs/{cancelled}/cancel", headers=beta).status_code == 200
    _run(sessions, running, step=1, values=STEP_METRICS)
    rollout_ids = add_rollouts(running, step=1)
    posts = [(0, 0.5, 200), (0, 0.5, 200), (0, 1.0, 409), (1, 1.5, 422), (2, 1.0, 200)]
    for index, value, status in posts:
        url = f"/v1/rollouts/{rollout_ids[index]}/reward"
        assert client.post(url, json={"value": value}, headers=alpha).status_code == status
    assert client.post("/v1/rollouts/ro_missing/reward", json={"value": 1}, headers=alpha)
    batch = [
        {"rollout_id": rollout_ids[3], "value": 1.0},
        {"rollout_id": rollout_ids[0], "value": 0.25},
    ]
    results = client.post("/v1/rewards", json={"rewards": batch}, headers=alpha).json()["results"]
    assert [r["ok"] for r in results] == [True, False]  # each item counted on its own
    for _ in range(3):
        assert client.get(f"/v1/jobs/{running}", headers=alpha).status_code == 200

    got = scrape(client, admin)

    statuses = {}
    for headers in (alpha, beta):
        for job in client.get("/v1/jobs", headers=headers).json()["data"]:
            statuses[job["status"]] = statuses.get(job["status"], 0) + 1
    assert statuses == {"running": 1, "queued": 1, "cancelled": 1}
    for status in ("queued", "running", "paused", "succeeded", "failed", "cancelled"):
        assert got[("keel_jobs", (("status", status),))] == statuses.get(status, 0), status
    rollouts = client.get(f"/v1/jobs/{running}/rollouts", headers=alpha).json()["data"]
    for status in ("awaiting_reward", "rewarded", "expired"):
        expected = sum(r["status"] == status for r in rollouts)
        assert got[("keel_rollouts", (("status", status),))] == expected, status
    assert got[("keel_rollouts", (("status", "rewarded"),))] == 3
    # Each create enqueued one message and no Celery worker consumes this (filesystem) queue.
    assert got[("keel_queue_depth", (("queue", "keel"),))] == 3

    job = client.get(f"/v1/jobs/{running}", headers=alpha).json()
    labels = (("job_id", running), ("project", "alpha"))
    assert got[("keel_job_step", labels)] == job["step"] == 1
    served = client.get(f"/v1/jobs/{running}/metrics", params={"step_min": 1}, headers=alpha)
    by_name = {p["name"]: p["value"] for p in served.json()}
    exported = {
        "reward/mean": "keel_job_reward_mean",
        "time/step_s": "keel_job_step_time_seconds",
        "mismatch/kl_k3": "keel_job_mismatch_kl_k3",
        "is/truncated_frac": "keel_job_is_truncated_fraction",
        "clip/frac": "keel_job_clip_fraction",
        "clip/frac_pos": "keel_job_clip_fraction_pos",
        "clip/frac_neg": "keel_job_clip_fraction_neg",
    }
    for name, gauge in exported.items():
        assert got[(gauge, labels)] == by_name[name] == STEP_METRICS[name], name
    assert not any(key[0].endswith("entropy") for key in got)
    assert not any(dict(key[1]).get("job_id") == queued for key in got)

    rewards = {
        o: got[("keel_reward_posts_total", (("outcome", o),))]
        for o in ("accepted", "duplicate", "conflicting", "rejected")
    }
    assert rewards == {"accepted": 3, "duplicate": 1, "conflicting": 2, "rejected": 2}
    route = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200"))
    assert got[("keel_http_requests_total", route)] == 3
    assert (
        got[
            (
                "keel_http_requests_total",
                (
                    ("method", "POST"),
                    ("route", "/v1/rollouts/{rollout_id}/reward"),
                    ("status", "409"),
                ),
            )
        ]
        == 1
    )
    count = (
        "keel_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/v1/jobs/{job_id}")),
    )
    assert got[count] == 3


def test_a_non_finite_step_metric_is_exported_as_nan(
    client, admin, project_key, job_body, sessions
) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    _run(sessions, job_id, step=2, values={"reward/mean": float("nan"), "time/step_s": 1.0})
    got = scrape(client, admin)
    labels = (("job_id", job_id), ("project", "alpha"))
    assert math.isnan(got[("keel_job_reward_mean", labels)])
    assert got[("keel_job_step_time_seconds", labels)] == 1.0
    assert ("keel_job_mismatch_kl_k3", labels) not in got  # never written: absent, not 0


@pytest.mark.parametrize(
    ("access", "token", "sent", "status"),
    [
        ("token", None, None, 401),
        ("token", None, "ADMIN", 200),
        ("token", "scrape-secret-0123", "scrape-secret-0123", 200),
        ("token", "scrape-secret-0123", "wrong", 401),
        ("open", None, None, 200),
        ("off", None, "ADMIN", 404),
    ],
)
def test_metrics_access_is_the_operators_choice(
    settings, admin, project_key, access, token, sent, status
) -> None:
    configured = settings.model_copy(update={"metrics_access": access, "metrics_token": token})
    with TestClient(create_app(configured)) as client:
        headers = {}
        if sent is not None:
            headers = admin if sent == "ADMIN" else {"Authorization": f"Bearer {sent}"}
        r = client.get("/metrics", headers=headers)
        assert r.status_code == status, r.text
        if status != 200:
            assert r.json()["code"] in ("unauthorized", "not_found")
        else:
            assert "keel_jobs" in r.text
        key = client.post("/v1/keys", json={"project": "p"}, headers=admin).json()["key"]
        project = client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert project.status_code == (
            200 if access == "open" else status if access == "off" else 401
        )
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.services
def test_queue_depth_on_redis(settings, admin, job_body) -> None:
    """The production broker: the depth is the queue's message count, and a path nobody routes
    is one `unmatched` label however many paths are tried."""
    queue = f"keel-metrics-{secrets.token_hex(4)}"
    on_redis = settings.model_copy(update={"broker_url": REDIS_URL, "job_queue": queue})
    try:
        with TestClient(create_app(on_redis)) as client:
            assert scrape(client, admin)[("keel_queue_depth", (("queue", queue),))] == 0
            for _ in range(2):
                assert client.post("/v1/jobs", json=job_body(), headers=admin).status_code == 201
            for path in ("/a", "/b/c", "/v1/nothing"):
                assert client.get(path).status_code == 404
            assert client.request("BREW", "/v1/jobs").status_code == 405
            got = scrape(client, admin)
    finally:
        with make_producer(on_redis).connection_for_write() as conn:
            conn.default_channel.client.delete(queue)
    assert got[("keel_queue_depth", (("queue", queue),))] == 2
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert got[("keel_http_requests_total", unmatched)] == 3
    brewed = (("method", "OTHER"), ("route", "/v1/jobs"), ("status", "405"))
    assert got[("keel_http_requests_total", brewed)] == 1
