"""The stability guard in a service job (`keel.run_job` in-process on the real database and the
tiny MoE model): alerts, pause with a reason, rollback to the checkpoint from before the breach
with the batch skipped and the learning rate scaled, bounded rollbacks then a pause, pinned
checkpoints, and a resume with a new learning rate and algorithm.

The trigger made to fire: a TIS cap of 0.5 truncates every token of an fp32 rollout (ρ = 1 >
0.5), so `is/truncated_frac` is 1.0 on every step and an `is_fraction` trigger at 0.5 with
patience 1 fires on every step it is armed. The real app's API serves what the worker wrote.
"""

from __future__ import annotations

import pytest
from in_process import job_settings
from job_configs import merge_config, tiny_job_config

import keel
from keel_server.platform.settings import Settings
from keel_server.platform.storage import job_dir
from keel_worker.jobrunner.runner import run_job

pytestmark = pytest.mark.slow
LOW_CAP = {"name": "minirl", "is_correction": {"mode": "token_truncate", "cap": 0.5}}


def guarded(action: str, **overrides) -> dict:
    """Three steps, a checkpoint after each, the IS-fraction trigger armed to fire."""
    trigger = {"max_frac": 0.5, "patience": 1, "action": action}
    base = tiny_job_config(
        steps=3,
        checkpoint_every=1,
        optimizer={"lr": 1e-3},
        algorithm=LOW_CAP,
        guard={"is_fraction": trigger},
    )
    return merge_config(base, overrides)


# Half the tiny model's random completions contain one of these letters: rewards that vary
# within a group, so the policy moves (the addition verifier scores them all 0).
SOME_LETTERS = {"type": "builtin", "verifier": "regex", "pattern": "[a-m]"}


def clipping(action: str, **overrides) -> dict:
    """The clip trigger armed at any clipped token: at lr 1e-2 the second of two mini-batches
    leaves the clip range at every step (with `SOME_LETTERS` rewards). Clip judges the step's
    own update, so the weights the step started from are good ones to roll back to."""
    trigger = {"max_frac": 1e-6, "patience": 1, "action": action}
    base = tiny_job_config(
        model={"name": "tiny-dense"},
        steps=3,
        checkpoint_every=1,
        group_size=4,
        num_minibatches=2,
        micro_batch_size=2,
        rollout={"max_new_tokens": 8},
        optimizer={"lr": 1e-2, "grad_clip": None},
        guard={"clip": trigger},
    )
    return merge_config(base, overrides)


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    return job_settings(sqlite_url, tmp_path, lease_timeout_s=3.0, prompt_poll_interval_s=0.05)


def _metric(sdk, job_id: str, name: str) -> dict[int, float | None]:
    return {m.step: m.value for m in sdk.metrics.list(job_id, name=name)}


def _events(sdk, job_id: str, type_: str) -> list[dict]:
    """The job's events of one type so far (a paused job's stream stays open for its resume)."""
    return [e.data for e in sdk.jobs.events(job_id, follow=False) if e.type == type_]


def test_alerts_are_events_metrics_and_the_summary_and_the_job_goes_on(sdk, settings):
    job = sdk.jobs.create(guarded("alert"))
    assert run_job(job.id, settings).status == "succeeded"
    done = sdk.jobs.retrieve(job.id)
    # Patience 1 fires at step 1; the trigger stays latched while the breach lasts.
    assert (done.guard.triggers, done.guard.last_step, done.guard.last_trigger) == (
        1,
        1,
        "is_fraction",
    )
    assert "IS-corrected token fraction 1 > 0.5" in done.guard.last_reason
    assert _metric(sdk, job.id, "guard/fired") == {1: 1.0, 2: 0.0, 3: 0.0}
    assert _metric(sdk, job.id, "guard/is_fraction") == {1: 1.0}
    [event] = _events(sdk, job.id, "guard")
    assert (event["trigger"], event["action"], event["step"], event["value"]) == (
        "is_fraction",
        "alert",
        1,
        1.0,
    )


def test_pause_checkpoints_shows_the_reason_and_resumes_with_a_new_lr_and_algorithm(sdk, settings):
    job = sdk.jobs.create(guarded("pause"))
    assert run_job(job.id, settings).status == "paused"
    paused = sdk.jobs.retrieve(job.id)
    assert (paused.status, paused.step) == ("paused", 1)
    assert paused.guard.last_reason.startswith("is_fraction at step 1: IS-corrected")
    assert paused.guard.last_reason.endswith("; paused")
    assert [c.step for c in sdk.checkpoints.list(job.id).data] == [1]
    [status] = [e for e in _events(sdk, job.id, "status") if e["status"] == "paused"]
    assert status["reason"] == paused.guard.last_reason

    # A resume that would make an invalid run is a 422 naming the field; nothing changes.
    with pytest.raises(keel.UnprocessableEntityError) as bad:
        sdk.jobs.resume(job.id, algorithm={"name": "minirl", "eps_low": -1})
    assert "eps_low" in str(bad.value)
    assert sdk.jobs.retrieve(job.id).status == "paused"

    resumed = sdk.jobs.resume(job.id, lr=2e-4, algorithm={"name": "minirl"})
    assert resumed.status == "queued"
    assert resumed.config["optimizer"]["lr"] == 2e-4
    assert resumed.config["algorithm"]["is_correction"]["cap"] == 5.0
    assert run_job(job.id, settings).status == "succeeded"
    done = sdk.jobs.retrieve(job.id)
    assert (done.status, done.step, done.guard.triggers) == ("succeeded", 3, 1)
    lr = _metric(sdk, job.id, "optim/lr")
    assert lr == {1: 1e-3, 2: 2e-4, 3: 2e-4}
    # With the paper's cap, no token is truncated: the trigger stays quiet after the resume.
    assert _metric(sdk, job.id, "is/truncated_frac")[2] == 0.0


def test_resume_with_changes_is_for_paused_jobs_only(sdk, settings):
    job = sdk.jobs.create(guarded("alert"))
    with pytest.raises(keel.ConflictError):
        sdk.jobs.resume(job.id, lr=1e-4)  # queued: nothing to resume
    assert sdk.jobs.retrieve(job.id).config["optimizer"]["lr"] == 1e-3


def test_rollback_restores_the_pre_breach_checkpoint_then_pauses_when_attempts_run_out(
    sdk, settings
):
    config = clipping("rollback", steps=3)
    config["guard"]["rollback"] = {"max_attempts": 2, "lr_scale": 0.5}
    job = sdk.jobs.create(config, reward=SOME_LETTERS)
    assert run_job(job.id, settings).status == "paused"
    job_ = sdk.jobs.retrieve(job.id)
    # Step 1 clips nothing, step 2 clips every time: rolled back to the checkpoint of step 1
    # (the weights step 2 started from; clip judges the update) twice (lr 1e-2 -> 5e-3 ->
    # 2.5e-3), and the third firing finds the attempts used up and pauses.
    assert (job_.guard.rollbacks, job_.guard.lr_scale, job_.guard.triggers) == (2, 0.25, 3)
    assert job_.guard.last_reason.endswith("paused: the 2 rollback attempts are used up")
    assert (job_.status, job_.step) == ("paused", 2)
    guard = _events(sdk, job.id, "guard")
    firings = [e for e in guard if "to_step" not in e]
    assert [(e["action"], e["step"], e["kept_checkpoint_step"]) for e in firings] == [
        ("rollback", 2, 1)
    ] * 3
    rollbacks = [e for e in guard if "to_step" in e]
    assert [(e["to_step"], e["lr_scale"]) for e in rollbacks] == [(1, 0.5), (1, 0.25)]
    # The step after each rollback ran at the scaled rate, from the restored weights.
    assert _metric(sdk, job.id, "optim/lr") == {1: 1e-2, 2: 2.5e-3}
    assert _metric(sdk, job.id, "policy/version") == {1: 1.0, 2: 2.0}
    # The checkpoint rolled back to is pinned; the pause saved step 2 beside it.
    checkpoints = {c.step: c.pinned for c in sdk.checkpoints.list(job.id).data}
    assert checkpoints == {0: False, 1: True, 2: False}
    # Only the last attempt's step-2 rollouts are kept (2 prompts × 4 samples), and they are
    # not the first step-2 batch: each re-run skipped the batch drawn before it.
    kept = [r for r in sdk.rollouts.list(job.id, limit=100).data if r.step == 2]
    assert len(kept) == 8
    unguarded = sdk.jobs.create(clipping("alert", steps=2), reward=SOME_LETTERS)
    assert run_job(unguarded.id, settings).status == "succeeded"
    first_batch = {r.prompt for r in sdk.rollouts.list(unguarded.id, limit=100).data if r.step == 2}
    assert first_batch and not first_batch & {r.prompt for r in kept}


def test_a_policy_signal_at_step_1_pauses_for_want_of_weights_that_never_breached(sdk, settings):
    # The IS fraction breaches on the starting weights' own rollouts: the step-0 checkpoint holds
    # the weights that breached, so there is nothing to roll back to and the job pauses at once.
    job = sdk.jobs.create(guarded("rollback"))
    assert run_job(job.id, settings).status == "paused"
    job_ = sdk.jobs.retrieve(job.id)
    assert (job_.guard.triggers, job_.guard.rollbacks, job_.step) == (1, 0, 1)
    assert job_.guard.last_reason.endswith(
        "paused: no checkpoint of weights from before the breach (step ≤ -1) to roll back to"
    )
    [firing] = _events(sdk, job.id, "guard")
    assert (firing["action"], firing["kept_checkpoint_step"]) == ("rollback", None)


def test_rollback_recovers_when_the_breach_does_not_come_back(sdk, settings):
    # Rollback on the KL trigger never fires on fp32 rollouts (KL is float noise below its
    # floor): the job runs through, and the only guard trace is the step-0 checkpoint.
    config = tiny_job_config(steps=2, optimizer={"lr": 1e-3}, guard={"kl": {"action": "rollback"}})
    job = sdk.jobs.create(config)
    assert run_job(job.id, settings).status == "succeeded"
    done = sdk.jobs.retrieve(job.id)
    assert (done.guard.triggers, done.guard.rollbacks) == (0, 0)
    assert [c.step for c in sdk.checkpoints.list(job.id).data] == [0, 2]
    assert (job_dir(settings.artifacts_dir, job.id) / "checkpoints" / "step_000000").is_dir()
