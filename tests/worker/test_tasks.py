"""`keel.run_job` in-process on the real database and the tiny MoE model: the lease (duplicate
deliveries leave the job alone, a stale lease is taken over and resumed from the latest
checkpoint), metrics once per step, checkpoints registered, cooperative pause and cancel, and
errors recorded with the step reached. Fault tests with real worker processes are in tests/e2e.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from in_process import job_settings
from job_configs import merge_config, tiny_job_config

import keel
from keel_server.db import session_scope, utcnow
from keel_server.db.jobs import finish_job, get_job, take_lease
from keel_server.platform.settings import Settings
from keel_server.platform.storage import job_dir
from keel_worker.jobrunner.runner import run_job


def job_config(**overrides) -> dict:
    """The tiny job, learning fast and checkpointing every step (resume tests need both)."""
    return merge_config(tiny_job_config(optimizer={"lr": 1e-3}, checkpoint_every=1), overrides)


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    return job_settings(sqlite_url, tmp_path, lease_timeout_s=3.0, prompt_poll_interval_s=0.05)


def _job_row(sessions, job_id: str) -> dict:
    with session_scope(sessions) as session:
        job = get_job(session, job_id)
        return {
            c: getattr(job, c)
            for c in (
                "status",
                "step",
                "attempts",
                "lease_owner",
                "heartbeat_at",
                "updated_at",
                "error",
            )
        }


def _metric_steps(sdk: keel.Client, job_id: str, name: str = "optim/loss") -> list[int]:
    return [m.step for m in sdk.metrics.list(job_id, name=name)]


@pytest.mark.slow
def test_builtin_job_runs_to_the_end(sdk, settings):
    job = sdk.jobs.create(job_config())
    outcome = run_job(job.id, settings)
    assert (outcome.status, outcome.step) == ("succeeded", 2)
    done = sdk.jobs.retrieve(job.id)
    assert (done.status, done.step, done.policy_version, done.attempts) == ("succeeded", 2, 2, 1)
    assert _metric_steps(sdk, job.id) == [1, 2]
    assert [c.step for c in sdk.checkpoints.list(job.id).data] == [1, 2]
    # The worker's checkpoints live in the one job directory that storage defines.
    checkpoints = job_dir(settings.artifacts_dir, job.id) / "checkpoints"
    saved = sorted(p.name for p in checkpoints.iterdir())
    assert saved == ["step_000001", "step_000002"]
    rollouts = sdk.rollouts.list(job.id, step=1).data
    assert len(rollouts) == 4 and all(r.status == "rewarded" for r in rollouts)
    assert all(r.reward in (0.0, 1.0) for r in rollouts)  # the addition task's verifier


def test_duplicate_delivery_with_a_live_lease_leaves_the_job_alone(sdk, settings, sessions):
    job = sdk.jobs.create(job_config())
    with session_scope(sessions) as session:
        assert take_lease(session, job.id, "live-worker", lease_timeout_s=60).acquired
    before = _job_row(sessions, job.id)
    outcome = run_job(job.id, settings)
    assert outcome.status == "held"
    assert _job_row(sessions, job.id) == before
    assert sdk.rollouts.list(job.id).data == []


def test_delivery_of_a_finished_job_does_nothing(sdk, settings, sessions):
    job = sdk.jobs.create(job_config(steps=1))
    with session_scope(sessions) as session:
        assert take_lease(session, job.id, "earlier-worker", lease_timeout_s=60).acquired
        assert finish_job(session, job.id, "earlier-worker", "succeeded")
    before = _job_row(sessions, job.id)
    assert run_job(job.id, settings).status == "not_runnable"
    assert _job_row(sessions, job.id) == before


def _start(settings, job_id: str) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(run_job(job_id, settings)))
    thread.start()
    return thread, result


def _reward(sdk, job_id: str, step: int, *, count: int | None = None) -> list[str]:
    """Wait for the step's rollouts, reward the first `count` (all by default); their ids."""
    deadline = time.monotonic() + 120
    while len(rollouts := sdk.rollouts.list(job_id, step=step).data) < 4:
        assert time.monotonic() < deadline, f"no rollouts for step {step}"
        time.sleep(0.02)
    chosen = rollouts[:count] if count is not None else rollouts
    for r in chosen:
        sdk.rewards.create(r.id, float(r.sample_index))
    return [r.id for r in chosen]


def _pause_during_step_2(sdk, settings, job_id: str) -> str:
    """Run the job until it waits for step 2's rewards with one posted, then pause it.
    Returns the id of the rollout rewarded before the pause."""
    thread, result = _start(settings, job_id)
    _reward(sdk, job_id, 1)
    kept = _reward(sdk, job_id, 2, count=1)[0]
    sdk.jobs.pause(job_id)
    thread.join(60)
    assert result[0].status == "paused"
    return kept


@pytest.mark.slow
def test_pause_checkpoints_and_resume_keeps_the_pending_rewards(sdk, settings):
    job = sdk.jobs.create(job_config(checkpoint_every=0), reward={"type": "external"})
    kept = _pause_during_step_2(sdk, settings, job.id)
    paused = sdk.jobs.retrieve(job.id)
    assert (paused.status, paused.step) == ("paused", 1)
    assert [c.step for c in sdk.checkpoints.list(job.id).data] == [1]  # pause checkpointed

    assert sdk.jobs.resume(job.id).status == "queued"
    thread, result = _start(settings, job.id)
    _reward_remaining(sdk, job.id, step=2)
    thread.join(120)
    assert result[0].status == "succeeded"
    assert _metric_steps(sdk, job.id) == [1, 2]
    step2 = sdk.rollouts.list(job.id, step=2).data
    assert len(step2) == 4 and kept in {r.id for r in step2}  # re-run step reused its rows
    assert sdk.rollouts.retrieve(kept).reward is not None
    assert sdk.metrics.list(job.id, name="groups/dropped")[-1].value == 0.0


def _reward_remaining(sdk, job_id: str, *, step: int) -> None:
    for r in sdk.rollouts.list(job_id, step=step, status="awaiting_reward").data:
        sdk.rewards.create(r.id, float(r.sample_index))


@pytest.mark.slow
def test_a_stale_lease_is_taken_over_and_resumed_from_the_latest_checkpoint(
    sdk, settings, sessions
):
    job = sdk.jobs.create(job_config(checkpoint_every=0), reward={"type": "external"})
    kept = _pause_during_step_2(sdk, settings, job.id)
    # Put the job back to running under a worker whose heartbeat stopped long ago.
    sdk.jobs.resume(job.id)
    with session_scope(sessions) as session:
        long_ago = utcnow() - timedelta(seconds=600)
        assert take_lease(session, job.id, "dead-worker", lease_timeout_s=3, now=long_ago).acquired
    thread, result = _start(settings, job.id)
    _reward_remaining(sdk, job.id, step=2)
    thread.join(120)
    assert (result[0].status, result[0].step) == ("succeeded", 2)
    assert sdk.jobs.retrieve(job.id).attempts == 3
    assert _metric_steps(sdk, job.id) == [1, 2]
    assert sdk.rollouts.retrieve(kept).status == "rewarded"


@pytest.mark.slow
def test_cancel_while_waiting_for_rewards(sdk, settings):
    job = sdk.jobs.create(job_config(), reward={"type": "external", "deadline_s": 120})
    result: list = []
    thread = threading.Thread(target=lambda: result.append(run_job(job.id, settings)))
    thread.start()
    deadline = time.monotonic() + 60
    while not sdk.rollouts.list(job.id).data and time.monotonic() < deadline:
        time.sleep(0.02)
    sdk.jobs.cancel(job.id)
    thread.join(30)
    assert result[0].status == "cancelled"
    assert sdk.jobs.retrieve(job.id).status == "cancelled"
    assert _metric_steps(sdk, job.id) == []


def test_a_failing_job_records_the_error_and_the_step_reached(sdk, settings):
    # Break the job in a way only the worker can see: a corrupt checkpoint to resume from.
    broken = sdk.jobs.create(job_config(steps=1))
    ckpts = job_dir(settings.artifacts_dir, broken.id) / "checkpoints" / "step_000000"
    ckpts.mkdir(parents=True)
    (ckpts / "trainer_state.pt").write_bytes(b"not a checkpoint")
    outcome = run_job(broken.id, settings)
    assert outcome.status == "failed"
    failed = sdk.jobs.retrieve(broken.id)
    assert failed.status == "failed" and "after step 0" in failed.error
    with pytest.raises(keel.JobFailedError):
        sdk.jobs.wait(broken.id, timeout_s=1)


def test_a_stored_reward_source_that_no_longer_parses_fails_the_job_before_training(
    sdk, settings, sessions
):
    # The worker parses the stored sources into their wire models once, at the lease.
    job = sdk.jobs.create(job_config())
    with session_scope(sessions) as session:
        row = get_job(session, job.id)
        row.reward_source = {**row.reward_source, "verifier": "carrier-pigeon"}
    assert run_job(job.id, settings).status == "failed"
    failed = sdk.jobs.retrieve(job.id)
    assert "ValidationError" in failed.error and "carrier-pigeon" in failed.error
    assert not (job_dir(settings.artifacts_dir, job.id) / "checkpoints").exists()


def test_celery_app_settings():
    import keel_worker.tasks  # noqa: F401 - registers keel.run_job
    from keel_worker.celery_app import RUN_JOB_TASK, app

    conf = app.conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost) == (True, True)
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert RUN_JOB_TASK in app.tasks
    assert conf.task_default_queue == app.keel_settings.job_queue


def test_reaper_enqueues_each_stale_job_once_per_lease_timeout(sdk, settings, sessions):
    from keel_server.platform.leases import LeaseReaper

    stale, live = sdk.jobs.create(job_config()), sdk.jobs.create(job_config())
    long_ago = utcnow() - timedelta(seconds=600)
    with session_scope(sessions) as session:
        assert take_lease(session, stale.id, "dead", lease_timeout_s=3, now=long_ago).acquired
        assert take_lease(session, live.id, "alive", lease_timeout_s=3).acquired
    sent: list[str] = []
    reaper = LeaseReaper(sessions, sent.append, lease_timeout_s=3.0, queued_timeout_s=600.0)
    assert reaper.sweep() == [stale.id]
    assert reaper.sweep() == []  # not again within one lease timeout
    assert sent == [stale.id]


def test_reaper_enqueues_a_job_queued_too_long_once_per_bound_across_processes(
    sdk, settings, sessions
):
    """A queued job whose broker message was lost is enqueued again after `queued_timeout_s`;
    one sweeper wins it per bound (the API and every worker sweep)."""
    from keel_server.platform.leases import LeaseReaper

    lost, fresh = sdk.jobs.create(job_config()), sdk.jobs.create(job_config())
    with session_scope(sessions) as session:
        get_job(session, lost.id).updated_at = utcnow() - timedelta(seconds=700)
    sent: list[str] = []
    api, worker = (
        LeaseReaper(sessions, sent.append, lease_timeout_s=3.0, queued_timeout_s=600.0)
        for _ in range(2)
    )
    assert api.sweep() == [lost.id]
    assert worker.sweep() == []  # the other process's sweep saw it enqueued already
    assert api.sweep() == []
    assert sent == [lost.id]
    assert _job_row(sessions, lost.id)["status"] == "queued"
    assert _job_row(sessions, fresh.id)["status"] == "queued"


def test_rewards_match_rollouts_by_position_and_text():
    from types import SimpleNamespace

    from keel.types.training import TaskItem
    from keel_worker.jobrunner.rewards import _match, db_text
    from keel_worker.training.scoring import Rollout

    item = TaskItem(prompt="p", answer="1")
    rollouts = [Rollout(0, s, item, f"c{s}\x00", 2, "stop", 0) for s in range(4)]

    def row(s: int, status: str, reward: float | None, text: str | None = None):
        completion = text if text is not None else db_text(f"c{s}\x00")
        return SimpleNamespace(
            group_index=0, sample_index=s, status=status, reward=reward, completion=completion
        )

    rows = [row(0, "rewarded", 0.5), row(1, "expired", None), row(2, "rewarded", 1.0, "other")]
    # rewarded → its value; expired → None; a different stored text → None; no row → None.
    assert _match(rollouts, rows) == [0.5, None, None, None]
    assert db_text("a\x00b") == "a\ufffdb"


# One (reward source, right completion, wrong completion, reference) per wire verifier name.
VERIFIER_CASES = {
    "task": ({}, "7 + 8 = 15", "16", "15"),
    "exact_match": ({}, " Paris\n", "paris", "Paris"),
    "numeric": ({}, "x = 2.50", "x = 2.51", "2.5"),
    "math_verify": ({}, "so $\\frac{1}{2}$", "so $\\frac{1}{3}$", "0.5"),
    "regex": ({"pattern": r"\bParis\b"}, "It is Paris.", "It is Parisian.", "Paris"),
}


def test_every_wire_verifier_scores_a_right_completion_1_and_a_wrong_one_0():
    from typing import get_args

    from keel.types.jobs import BuiltinReward, RewardVerifier
    from keel.types.training import TaskConfig, TaskItem
    from keel_worker.jobrunner.rewards import builtin_verifier
    from keel_worker.training.scoring import Rollout
    from keel_worker.training.tasks import build_task

    names = {name for literal in get_args(RewardVerifier) for name in get_args(literal)}
    assert names == set(VERIFIER_CASES)
    task = build_task(TaskConfig())  # addition: the `task` verifier's integer reward
    for name, (extra, right, wrong, reference) in VERIFIER_CASES.items():
        verify = builtin_verifier(BuiltinReward(verifier=name, **extra), task)
        item = TaskItem(prompt="q", answer=reference)
        scores = [verify(Rollout(0, 0, item, text, 3, "stop", 0)) for text in (right, wrong)]
        assert scores == [1.0, 0.0], name


def _regex_score_in_a_child(pattern: str, completion: str, queue) -> None:
    from keel.types.jobs import BuiltinReward
    from keel.types.training import TaskItem
    from keel_worker.jobrunner.rewards import builtin_verifier
    from keel_worker.training.scoring import Rollout

    verify = builtin_verifier(BuiltinReward(verifier="regex", pattern=pattern), None)
    queue.put(verify(Rollout(0, 0, TaskItem(prompt="q", answer=""), completion, 3, "stop", 0)))


@pytest.mark.parametrize(
    ("pattern", "completion"),
    [(r"([\s\S]+)+\x01", "a" * 5000), (r"(a+)+$", "a" * 30 + "!")],
)
def test_a_catastrophic_regex_reward_scores_in_linear_time(pattern, completion):
    """Nested quantifiers that a backtracking engine takes minutes over (2^n paths for n
    characters, with the GIL held so the heartbeat stops) are scored at once. The verifier runs
    in a forked child so that a backtracking engine fails this test instead of hanging it."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_regex_score_in_a_child, args=(pattern, completion, queue))
    child.start()
    child.join(timeout=5.0)
    stuck = child.is_alive()
    if stuck:
        child.kill()
        child.join()
    assert not stuck, f"scoring {pattern!r} on {len(completion)} characters took over 5 s"
    assert queue.get(timeout=1.0) == 0.0  # neither pattern matches its completion


@pytest.mark.slow
def test_a_regex_reward_chosen_on_the_wire_scores_the_job(sdk, settings):
    # `^` matches every completion: every reward is 1 (an unread verifier field would give the
    # addition task's mostly-0 rewards from an untrained model).
    reward = {"type": "builtin", "verifier": "regex", "pattern": "^"}
    job = sdk.jobs.create(job_config(steps=1, checkpoint_every=0), reward=reward)
    assert run_job(job.id, settings).status == "succeeded"
    rollouts = sdk.rollouts.list(job.id, step=1).data
    assert len(rollouts) == 4 and all(r.reward == 1.0 for r in rollouts)


@pytest.mark.slow
def test_the_job_shows_its_routing_replay_decision(sdk, settings):
    job = sdk.jobs.create(job_config(num_minibatches=2, routing_replay_every=1))
    assert run_job(job.id, settings).status == "succeeded"
    replay = sdk.jobs.retrieve(job.id).routing_replay
    assert (replay.requested, replay.decided_at_step) == ("auto", 2)
    assert replay.mode in ("none", "R2", "R3") and "step 2: staleness S=" in replay.reason
    modes = sdk.metrics.list(job.id, name="routing/replay_mode")
    assert [(m.step, m.value) for m in modes][:1] == [(1, 2.0)]  # step 1: the prior for N = 2
    assert [m.step for m in modes] == [1, 2]


@pytest.mark.slow
def test_a_lora_job_trains_through_the_service_and_its_checkpoint_loads_in_peft(sdk, settings):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from keel_worker.engines.models import load_model

    with pytest.raises(keel.UnprocessableEntityError):
        sdk.jobs.create(job_config(lora={"target_modules": []}))
    # Rewards 0 and 1 in every group (by sample index) make a real update: the untrained
    # model's all-zero addition rewards would leave the adapters at zero.
    job = sdk.jobs.create(job_config(steps=1, lora={"rank": 4}), reward={"type": "external"})
    thread, result = _start(settings, job.id)
    _reward(sdk, job.id, step=1)
    thread.join(120)
    assert result[0].status == "succeeded"
    assert sdk.metrics.list(job.id, name="optim/grad_norm")[-1].value > 0
    (checkpoint,) = sdk.checkpoints.list(job.id).data
    path = job_dir(settings.artifacts_dir, job.id) / "checkpoints" / "step_000001"
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    base = load_model("tiny-moe", cache_dir=settings.home / "cache").model
    with torch.no_grad():
        base_logits = base(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(path)(ids).logits
        adapter = PeftModel.from_pretrained(base, path / "adapter")(ids).logits
    torch.testing.assert_close(adapter, merged, rtol=0, atol=1e-5)
    assert (merged - base_logits).abs().max() > 1e-4  # the job's update is in both
    assert set(checkpoint.kinds) == {"weights", "adapter", "merged", "full"}  # a LoRA job's
    assert checkpoint.kinds["adapter"].size_bytes < checkpoint.kinds["weights"].size_bytes
