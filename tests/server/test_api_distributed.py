"""Job creation checks `config.distributed` against what the live workers of the job queue
advertise (`keel_server.services.capacity`): a request no live worker can run is a 422 naming the
limit; with no live worker (none started yet, or all stopped) the job is accepted and the worker
that leases it checks again (tests/worker/test_rank_group.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keel_server.db import make_engine, make_session_factory, session_scope, utcnow
from keel_server.db.workers import advertise


@pytest.fixture
def workers(settings):
    """Advertise a worker of the job queue: `workers(id, max_processes, engines, seen_s_ago)`."""
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)

    def add(worker_id: str, max_processes: int, engines=("hf",), seen_s_ago: float = 0.0):
        with session_scope(factory) as session:
            advertise(
                session,
                worker_id,
                host="host-" + worker_id,
                queue=settings.job_queue,
                max_processes=max_processes,
                engines=engines,
                now=utcnow() - timedelta(seconds=seen_s_ago),
            )

    yield add
    engine.dispose()


def post(client, job_body, headers, **distributed):
    return client.post(
        "/v1/jobs", json=job_body(config={"distributed": distributed}), headers=headers
    )


def error_of(response) -> tuple[list, str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    return body["errors"][0]["loc"], body["detail"]


def test_more_processes_than_any_live_worker_runs_is_a_422_naming_the_limit(
    client, job_body, project_key, workers
):
    headers = project_key("alpha")
    workers("w1", 2)
    workers("w2", 1)
    workers("gone", 8, seen_s_ago=3600)  # stopped long ago: not live, not counted
    loc, detail = error_of(post(client, job_body, headers, processes=4))
    assert loc == ["body", "config", "distributed", "processes"]
    assert detail == (
        "body.config.distributed.processes: asks for 4 trainer processes per machine; the live "
        "workers run at most 2 per job (KEEL_WORKER_MAX_PROCESSES)"
    )
    assert post(client, job_body, headers, processes=2).status_code == 201


def test_more_machines_than_live_workers_able_to_run_them_is_a_422(
    client, job_body, project_key, workers
):
    headers = project_key("alpha")
    workers("w1", 2)
    workers("w2", 1)
    loc, detail = error_of(post(client, job_body, headers, processes=2, nodes=2))
    assert loc[-1] == "nodes"
    assert "1 live worker(s) advertise that many" in detail
    assert post(client, job_body, headers, processes=1, nodes=2).status_code == 201


def test_tensor_parallel_needs_a_live_vllm_worker_with_that_many_gpus(
    client, job_body, project_key, workers
):
    headers = project_key("alpha")
    workers("cpu", 8)
    workers("gpu", 2, engines=("hf", "vllm"))
    body = job_body(config={"rollout": {"engine": "vllm"}, "distributed": {"tensor_parallel": 4}})
    loc, detail = error_of(client.post("/v1/jobs", json=body, headers=headers))
    assert loc[-1] == "tensor_parallel" and "at most 2" in detail
    body = job_body(config={"rollout": {"engine": "vllm"}, "distributed": {"tensor_parallel": 2}})
    assert client.post("/v1/jobs", json=body, headers=headers).status_code == 201
    # A tensor-parallel size shards a vLLM engine: without one it is refused by the schema.
    loc, _ = error_of(post(client, job_body, headers, tensor_parallel=2))
    assert "config" in loc


def test_with_no_live_worker_the_job_is_accepted_for_the_leasing_worker_to_check(
    client, job_body, project_key, workers
):
    headers = project_key("alpha")
    assert post(client, job_body, headers, processes=4).status_code == 201  # none registered
    workers("w1", 1, seen_s_ago=3600)  # every worker stopped
    assert post(client, job_body, headers, processes=4).status_code == 201
    workers("w1", 1)  # back: now the request is checked
    assert post(client, job_body, headers, processes=4).status_code == 422


def test_lora_and_agent_jobs_of_several_ranks_are_a_422_saying_why(client, job_body, project_key):
    headers = project_key("alpha")
    body = job_body(config={"lora": {"rank": 4}, "distributed": {"processes": 2}})
    loc, detail = error_of(client.post("/v1/jobs", json=body, headers=headers))
    assert loc[-1] == "processes" and "LoRA is not supported on more than one" in detail
    body = job_body(
        config={"distributed": {"nodes": 2}},
        prompts={"type": "agent", "tasks": [{"q": 1}]},
        reward={"type": "external"},
    )
    loc, detail = error_of(client.post("/v1/jobs", json=body, headers=headers))
    assert loc[-1] == "processes" and "an agent job runs in one process" in detail
