"""Prompts, rollouts and rewards through the SDK, with the reward token a reward service holds:
idempotent posts, a conflicting value raised once (never retried), non-finite values refused,
a reward past the deadline refused with the rollout's state, batch results per item."""

from __future__ import annotations

import pytest

import keel

BASE_URL = "http://testserver"


def _reward_service(http, token: str, **kw) -> keel.Client:
    return keel.Client(base_url=BASE_URL, api_key=token, http_client=http, **kw)


def test_reward_token_posts_rewards_idempotently(project_client, http, add_rollouts, small_config):
    owner = project_client("alpha")
    job = owner.jobs.create(small_config(), reward={"type": "external"})
    ids = add_rollouts(job.id)
    service = _reward_service(http, job.reward_token, max_retries=3, backoff_base_s=0.0)

    pending = service.rollouts.list(job.id, status="awaiting_reward")
    assert [r.id for r in pending.data] == ids
    first = service.rewards.create(ids[0], 1.0)
    assert (first.status, first.reward, first.created) == ("rewarded", 1.0, True)
    again = service.rewards.create(ids[0], 1.0)
    assert again.created is False

    requests: list[str] = []
    http.event_hooks["request"].append(lambda request: requests.append(request.url.path))
    with pytest.raises(keel.ConflictError) as conflict:
        service.rewards.create(ids[0], 0.0)
    assert conflict.value.code == "reward_conflict"
    assert conflict.value.state["reward"] == 1.0
    assert requests == [f"/v1/rollouts/{ids[0]}/reward"]  # a real conflict is not retried
    assert owner.rollouts.retrieve(ids[0]).reward == 1.0


def test_reward_token_is_scoped_to_its_job(project_client, http, add_rollouts, small_config):
    owner = project_client("alpha")
    job = owner.jobs.create(small_config(), reward={"type": "external"})
    other = owner.jobs.create(small_config(), reward={"type": "external"})
    other_ids = add_rollouts(other.id)
    service = _reward_service(http, job.reward_token, max_retries=0)
    with pytest.raises(keel.NotFoundError):
        service.rewards.create(other_ids[0], 1.0)
    with pytest.raises(keel.NotFoundError):
        service.rollouts.list(other.id)
    with pytest.raises((keel.PermissionDeniedError, keel.NotFoundError)):
        service.jobs.cancel(job.id)


def test_non_finite_and_out_of_range_rewards_are_refused(
    project_client, add_rollouts, small_config
):
    client = project_client("alpha")
    reward = {"type": "external", "min_value": 0.0, "max_value": 1.0}
    job = client.jobs.create(small_config(), reward=reward)
    rollout_id = add_rollouts(job.id)[0]
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            client.rewards.create(rollout_id, value)
        with pytest.raises(ValueError, match="finite"):
            client.rewards.batch({rollout_id: value})
    with pytest.raises(keel.UnprocessableEntityError) as high:
        client.rewards.create(rollout_id, 1.5)
    assert "max_value" in high.value.detail
    assert client.rollouts.retrieve(rollout_id).status == "awaiting_reward"


def test_reward_after_the_deadline_is_a_clear_conflict(project_client, add_rollouts, small_config):
    client = project_client("alpha")
    job = client.jobs.create(small_config(), reward={"type": "external"})
    rollout_id = add_rollouts(job.id, deadline_s=-1.0)[0]
    with pytest.raises(keel.ConflictError) as late:
        client.rewards.create(rollout_id, 1.0)
    assert late.value.code == "rollout_not_awaiting_reward"
    assert late.value.state["status"] == "expired"
    assert "deadline" in late.value.detail
    assert client.rollouts.retrieve(rollout_id).status == "expired"


def test_batch_rewards_report_each_item(project_client, add_rollouts, small_config):
    client = project_client("alpha")
    job = client.jobs.create(small_config(), reward={"type": "external"})
    ids = add_rollouts(job.id)
    client.rewards.create(ids[1], 0.5)
    result = client.rewards.batch({ids[0]: 1.0, ids[1]: 0.25, "ro_missing": 1.0})
    by_id = {r.rollout_id: r for r in result.results}
    assert by_id[ids[0]].ok and by_id[ids[0]].reward == 1.0
    assert not by_id[ids[1]].ok and by_id[ids[1]].error.code == "reward_conflict"
    assert not by_id["ro_missing"].ok and by_id["ro_missing"].error.code == "not_found"


def test_client_prompts_are_appended_in_order(project_client, small_config):
    client = project_client("alpha")
    job = client.jobs.create(
        small_config(), prompts={"type": "client"}, reward={"type": "external"}
    )
    assert client.prompts.create(job.id, ["What is 1 + 1?"]).total == 1
    result = client.prompts.create(job.id, [{"text": "What is 2 + 2?", "reference": "4"}])
    assert (result.accepted, result.total) == (1, 2)
    listed = client.prompts.list(job.id).data
    assert [(p.index, p.text, p.reference) for p in listed] == [
        (0, "What is 1 + 1?", None),
        (1, "What is 2 + 2?", "4"),
    ]


def test_uploaded_jsonl_file_becomes_a_dataset_job(project_client, tmp_path, small_config):
    client = project_client("alpha")
    path = tmp_path / "prompts.jsonl"
    lines = ['{"text": "1 + 2 =", "reference": "3"}', '{"text": "2 + 2 =", "reference": "4"}']
    path.write_text("\n".join(lines) + "\n")
    uploaded = client.files.create(path)
    assert (uploaded.filename, uploaded.num_prompts) == ("prompts.jsonl", 2)
    job = client.jobs.create(
        small_config(),
        prompts={"type": "dataset", "file_id": uploaded.id},
        reward={"type": "builtin", "verifier": "numeric"},
    )
    listed = client.prompts.list(job.id).data
    assert [(p.text, p.reference) for p in listed] == [("1 + 2 =", "3"), ("2 + 2 =", "4")]
    # Deleting the file leaves the job's prompts; the file is gone for good.
    assert client.files.delete(uploaded.id) is None
    assert [p.text for p in client.prompts.list(job.id).data] == ["1 + 2 =", "2 + 2 ="]
    with pytest.raises(keel.NotFoundError):
        client.files.delete(uploaded.id)
