"""Contract tests of metrics, checkpoints (streamed download), SSE events, health, limits and
unknown routes: all errors in the one envelope."""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile

from keel_server.db import checkpoints as ckpt_db
from keel_server.db import jobs as jobs_db
from keel_server.db import metrics as metrics_db
from keel_server.db import session_scope
from keel_server.platform.storage import archive_digest, archive_kinds


def test_oversized_body_is_413(job_body, client, project_key, settings) -> None:
    headers = project_key("alpha")
    huge = job_body(name="x" * (settings.max_body_bytes + 1))
    r = client.post("/v1/jobs", json=huge, headers=headers)
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(settings.max_body_bytes // 1000 + 2):
            yield b" " * 1000

    r = client.post("/v1/jobs", content=chunked(), headers=headers)
    assert r.status_code == 413


def test_unknown_route_and_method_use_the_envelope(client, project_key) -> None:
    r = client.get("/v1/nothing-here", headers=project_key("alpha"))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = client.put("/v1/jobs", headers=project_key("alpha"))
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}  # RFC 9110
    r = client.post("/v1/keys/key_x", headers=project_key("alpha"))
    assert r.status_code == 405 and r.headers["allow"] == "DELETE"


def test_metrics_query_by_name_and_range(job_body, client, project_key, sessions) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    with session_scope(sessions) as s:
        for step in (1, 2, 3):
            metrics_db.write_step_metrics(
                s, job_id, step, {"train/loss": 1.0 / step, "mismatch/k3_kl": float(step)}
            )
        # Re-writing a step (a resumed step) replaces it: still one row per (step, name).
        metrics_db.write_step_metrics(s, job_id, 3, {"train/loss": 0.25, "train/grad": math.nan})
    url = f"/v1/jobs/{job_id}/metrics"
    rows = client.get(url, headers=headers).json()
    assert [(r["step"], r["name"]) for r in rows] == [
        (1, "mismatch/k3_kl"),
        (1, "train/loss"),
        (2, "mismatch/k3_kl"),
        (2, "train/loss"),
        (3, "train/grad"),
        (3, "train/loss"),
    ]
    loss = client.get(url, params={"name": "train/loss", "step_min": 2}, headers=headers).json()
    assert [(r["step"], r["value"]) for r in loss] == [(2, 0.5), (3, 0.25)]
    nan_row = client.get(url, params={"name": "train/grad"}, headers=headers).json()
    assert nan_row == [{"step": 3, "name": "train/grad", "value": None}]
    bad = client.get(url, params={"step_min": 3, "step_max": 1}, headers=headers)
    assert bad.status_code == 422


def test_checkpoint_list_retrieve_and_download(
    job_body, client, project_key, sessions, tmp_path
) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    hf_dir = tmp_path / "ckpt" / "step_2"
    (hf_dir / "sub").mkdir(parents=True)
    (hf_dir / "config.json").write_text('{"model_type": "llama"}')
    (hf_dir / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    size, sha = archive_digest(hf_dir, kind="full")
    with session_scope(sessions) as s:
        row = ckpt_db.register_checkpoint(
            s, job_id, step=2, policy_version=2, path=str(hf_dir), kinds=archive_kinds(hf_dir)
        )
        ckpt_id = row.id
    page = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=headers).json()
    full = {"size_bytes": size, "sha256": sha}
    assert [(c["id"], c["step"], c["kinds"]["full"]) for c in page["data"]] == [(ckpt_id, 2, full)]
    retrieved = client.get(f"/v1/checkpoints/{ckpt_id}", headers=headers).json()
    assert retrieved["kinds"]["full"]["sha256"] == sha
    r = client.get(f"/v1/checkpoints/{ckpt_id}/download?kind=full", headers=headers)
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == size == len(r.content)
    assert r.headers["x-keel-sha256"] == hashlib.sha256(r.content).hexdigest() == sha
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = sorted(tar.getnames())
        weights = tar.extractfile("checkpoint/sub/weights.bin").read()
    assert names == [
        "checkpoint",
        "checkpoint/config.json",
        "checkpoint/sub",
        "checkpoint/sub/weights.bin",
    ]
    assert weights == bytes(range(256)) * 10
    assert client.get("/v1/checkpoints/ckpt_nope", headers=headers).status_code == 404


def _parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "data" in fields:
            events.append(
                {
                    "id": int(fields["id"]),
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            )
    return events


def _job_with_one_step(client, job_body, headers, sessions, *, finish: bool) -> str:
    """A job a worker leased and logged one step of metrics for, then finished or not."""
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    with session_scope(sessions) as s:
        assert jobs_db.take_lease(s, job_id, "w1", lease_timeout_s=60).acquired
        metrics_db.write_step_metrics(s, job_id, 1, {"train/loss": 0.5})
        if finish:
            assert jobs_db.finish_job(s, job_id, "w1", "succeeded")
    return job_id


def test_events_stream_and_resume_with_last_event_id(
    job_body, client, project_key, sessions
) -> None:
    headers = project_key("alpha")
    job_id = _job_with_one_step(client, job_body, headers, sessions, finish=True)
    r = client.get(f"/v1/jobs/{job_id}/events", headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _parse_sse(r.text)
    assert [(e["event"], e["data"]["data"].get("status")) for e in events] == [
        ("status", "queued"),
        ("status", "running"),
        ("metrics", None),
        ("status", "succeeded"),
    ]
    assert events[2]["data"]["data"] == {"step": 1, "values": {"train/loss": 0.5}}
    resumed = client.get(
        f"/v1/jobs/{job_id}/events", headers=headers | {"Last-Event-ID": str(events[1]["id"])}
    )
    assert [e["id"] for e in _parse_sse(resumed.text)] == [e["id"] for e in events[2:]]


def test_events_without_follow_end_after_the_events_so_far(
    job_body, client, project_key, sessions
) -> None:
    headers = project_key("alpha")
    job_id = _job_with_one_step(client, job_body, headers, sessions, finish=False)
    # The job is still running: a followed stream would wait for its end.
    r = client.get(f"/v1/jobs/{job_id}/events", params={"follow": "false"}, headers=headers)
    assert [(e["event"], e["data"]["data"].get("status")) for e in _parse_sse(r.text)] == [
        ("status", "queued"),
        ("status", "running"),
        ("metrics", None),
    ]


def test_health_live_and_ready(client) -> None:
    assert client.get("/health/live").json() == {"status": "ok", "checks": {}}
    ready = client.get("/v1/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_ready_is_503_when_the_broker_is_down(settings) -> None:
    from fastapi.testclient import TestClient

    from keel_server.api.app import create_app

    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        r = client.get("/health/ready")
    assert r.status_code == 503
    assert r.json()["checks"]["broker"].startswith("error")
    assert r.json()["checks"]["database"] == "ok"


def test_openapi_schema_is_served(client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/rollouts/{rollout_id}/reward", "/v1/rewards"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_a_failed_job_keeps_its_error_step_and_metrics(
    job_body, client, project_key, sessions
) -> None:
    headers = project_key("alpha")
    job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]
    with session_scope(sessions) as s:
        assert jobs_db.take_lease(s, job_id, "w1", lease_timeout_s=60).acquired
        metrics_db.write_step_metrics(s, job_id, 1, {"train/loss": 0.5})
        jobs_db.record_progress(s, job_id, "w1", step=1, policy_version=1)
        assert jobs_db.finish_job(s, job_id, "w1", "failed", error="CUDA OOM in step 2")
    job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert (job["status"], job["step"], job["error"]) == ("failed", 1, "CUDA OOM in step 2")
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=headers).json()
    assert metrics == [{"step": 1, "name": "train/loss", "value": 0.5}]
    r = client.post(f"/v1/jobs/{job_id}/pause", headers=headers)
    assert r.status_code == 409 and r.json()["state"]["status"] == "failed"
