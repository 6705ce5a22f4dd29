"""A whole service job with `rollout.engine = "vllm"` (vLLM's CPU backend in `make test-vllm`):
API, Celery worker subprocesses, PostgreSQL and Redis, driven through the SDK only.

The default model (SmolLM2-135M) on a 2-step budget: step 1 is checkpointed, the worker is
SIGKILLed inside step 2's generation, a second worker resumes the job from the checkpoint with a
fresh vLLM engine and finishes it. The worker's vLLM knobs come from its `KEEL_VLLM_*`
environment (a small KV cache and context, so the engine fits next to the trainer).
"""

from __future__ import annotations

import signal

import pytest

import keel

# Two vLLM engine starts and a SmolLM2 conversion per worker: past the suite's per-test limit
# on a loaded 2-core machine.
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(1800)]

VLLM_ENV = {"KEEL_VLLM_KV_CACHE_GIB": "0.5", "KEEL_VLLM_MAX_MODEL_LEN": "512"}
CONFIG = {
    "model": {"name": "smollm2-135m-instruct"},
    "steps": 2,
    "prompts_per_step": 2,
    "group_size": 2,
    "micro_batch_size": 4,
    "rollout": {"engine": "vllm", "max_new_tokens": 4},
    "seed": 3,
}


def _in_step_2_generation(client, job_id: str) -> bool:
    job = client.jobs.retrieve(job_id)
    assert job.status in ("queued", "running"), f"{job.status}: {job.error}"
    if job.step != 1 or job.status != "running":
        return False
    saved = [c.step for c in client.checkpoints.list(job_id).data]
    return 1 in saved and not client.rollouts.list(job_id, step=2).data


def test_a_vllm_job_checkpoints_and_resumes_after_a_worker_kill(production_stack, helpers):
    stack = production_stack
    stack.env.update(VLLM_ENV)
    base_url = stack.api()
    first = stack.worker("w1")
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)
    job = client.jobs.create(helpers.job_config(**CONFIG), reward={"type": "builtin"})

    helpers.wait_until(
        lambda: _in_step_2_generation(client, job.id),
        timeout_s=600,
        interval_s=0.05,
        what="step 2 of the vllm job",
    )
    first.kill(signal.SIGKILL)
    assert "Initializing a V1 LLM engine" in first.output()  # the rollouts came from vLLM
    assert client.jobs.retrieve(job.id).step == 1

    second = stack.worker("w2")
    done = client.jobs.wait(job.id, timeout_s=600, poll_interval_s=0.5)
    assert (done.status, done.step, done.policy_version, done.attempts) == (
        "succeeded",
        2,
        2,
        2,
    ), done.error
    log = second.output()
    assert "resuming from" in log and "Initializing a V1 LLM engine" in log
    assert "kv_cache_memory_bytes': 536870912" in log and "'max_model_len': 512" in log
    helpers.assert_every_step_once(client, job.id, steps=2)
    rollouts = client.rollouts.list(job.id, limit=100).data
    assert sorted(r.step for r in rollouts) == [1, 1, 1, 1, 2, 2, 2, 2]
    assert {r.status for r in rollouts} == {"rewarded"}
    assert {r.step for r in rollouts if r.policy_version == 1} == {2}  # sampled after the sync
    assert sorted(c.step for c in client.checkpoints.list(job.id).data) == [1, 2]
