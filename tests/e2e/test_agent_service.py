"""An agent job on the production path: `keel server` and a `keel worker` (Celery on Redis) as
their own processes on PostgreSQL; the harness drives the episodes with the unmodified `openai`
SDK through the API, which forwards each call to the worker's policy server."""

from __future__ import annotations

import pytest
from agent_harness import STEPS, agent_job, run_sync_harness

import keel

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_an_agent_job_on_postgres_redis_and_a_celery_worker(production_stack, helpers, tmp_path):
    base_url = production_stack.api()
    production_stack.worker("w1")
    with keel.Client(base_url=base_url, api_key=helpers.admin_key) as client:
        job = agent_job(client, checkpoint_every=1)
        seen = run_sync_harness(client, job.id)
        done = client.jobs.wait(job.id, timeout_s=240, poll_interval_s=0.5)
        assert (done.status, done.step, done.policy_version) == ("succeeded", STEPS, STEPS)
        assert len(seen) == STEPS * 2 * 2
        helpers.assert_every_step_once(client, job.id, steps=STEPS)
        episode = client.episodes.retrieve(next(iter(seen)))
        assert [t.sampled_tokens for t in episode.turns] == [
            len(s["token_ids"]) for s in seen[episode.id]
        ]
        checkpoint, model = helpers.load_checkpoint(client, job.id, tmp_path / "model")
        assert checkpoint.step == STEPS and model.config.model_type == "qwen3"
