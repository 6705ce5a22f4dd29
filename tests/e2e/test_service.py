"""The production path end to end: `keel server` + a `keel worker` on PostgreSQL and Redis, a
separate reward-service process answering a signed webhook through the SDK, and the trained
checkpoint downloaded and loaded with transformers."""

from __future__ import annotations

import pytest
import torch

import keel

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_webhook_job_on_postgres_and_redis(production_stack, helpers, tmp_path):
    base_url = production_stack.api()
    production_stack.worker("w1")
    service = production_stack.reward_service(base_url)
    client = keel.Client(base_url=base_url, api_key=helpers.admin_key)

    job = client.jobs.create(helpers.job_config(), reward=helpers.webhook_reward(service))
    service.give_token(job.reward_token)
    done = client.jobs.wait(job.id, timeout_s=240, poll_interval_s=0.5)

    assert (done.status, done.step, done.policy_version, done.attempts) == ("succeeded", 2, 2, 1)
    helpers.assert_every_step_once(client, job.id, steps=2)
    posted = service.posted()
    assert len(posted) == 8  # 2 steps × 2 prompts × 2 samples, all scored by the service
    helpers.assert_rewards_kept(client, job.id, posted)
    events = [e.type for e in client.jobs.events(job.id)]
    assert events.count("metrics") == 2 and events[-1] == "status"

    checkpoint, model = helpers.load_checkpoint(client, job.id, tmp_path / "model")
    assert checkpoint.step == 2 and model.config.model_type == "qwen3_moe"
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[:2] == (1, 3) and torch.isfinite(logits).all()
