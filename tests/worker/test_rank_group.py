"""A job's rank group (`keel_worker.jobrunner.group`): the launcher agents and their c10d
rendezvous, the lease holder's watch over the ranks, and how a group ends, with real processes
(torch.distributed's elastic agent, gloo) running the group probe (`jobrunner.group_probe`: an
all-reduce per step under the job's control) instead of a model, so each test takes seconds.

- Two agents standing for two machines join one rendezvous on loopback and run a 2-rank group.
- A probe job of 2 ranks runs through `run_job`: rank 0 records each step under the lease.
- SIGKILL of one rank fails the job within the declared bound, naming the rank and the signal.
- Cancel stops every rank: at a step boundary, or (inside a long step) by the worker's teardown.
- A rank that stops making progress fails the job within the stall bound.
- A worker asked for more ranks than it advertises fails the job without launching anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from in_process import job_settings
from job_configs import tiny_job_config

from keel_server.db import session_scope
from keel_server.db.events import list_events
from keel_server.db.jobs import get_job, set_requested
from keel_server.platform.leases import pid_running
from keel_server.platform.settings import Settings
from keel_server.platform.storage import job_dir
from keel_worker.jobrunner import group, group_progress
from keel_worker.jobrunner.runner import RunOutcome, run_job

GRACE_S = 3.0  # group_stop_grace_s of these tests
STALL_S = 8.0  # group_stall_timeout_s of these tests
# How long a dead rank may take to end the job: the agent sees it within its monitor interval and
# ends the others; failing that the worker does after the grace, then waits out SIGTERM.
DEATH_BOUND_S = GRACE_S + group.TERMINATE_WAIT_S + 2.0


@pytest.fixture
def settings(sqlite_url: str, tmp_path) -> Settings:
    return job_settings(
        sqlite_url,
        tmp_path,
        worker_max_processes=2,
        group_stop_grace_s=GRACE_S,
        group_stall_timeout_s=STALL_S,
        group_requeues=0,  # a failure fails the job (the re-queue tests ask for one)
        lease_timeout_s=10.0,
    )


def probe_job(sdk, *, steps: int = 2, **distributed) -> str:
    config = tiny_job_config(steps=steps, distributed={"processes": 2, **distributed})
    return sdk.jobs.create(config).id


def probe_args(*, steps: int, step_s: float = 0.0, stall_rank: int | None = None) -> tuple:
    args = ("--probe", "--probe-steps", str(steps), "--probe-step-s", str(step_s))
    return args + (("--probe-stall-rank", str(stall_rank)) if stall_rank is not None else ())


class Delivery:
    """`run_job` in a thread, as a Celery pool process runs it; `ended_at` when it returned."""

    def __init__(
        self, job_id: str, settings: Settings, rank_args: tuple, requeued: list | None = None
    ) -> None:
        self.outcome: RunOutcome | None = None
        self.ended_at: float | None = None
        requeue = (lambda: requeued.append(job_id)) if requeued is not None else None
        self.thread = threading.Thread(
            target=self._run, args=(job_id, settings, rank_args, requeue)
        )
        self.thread.start()

    def _run(self, job_id, settings, rank_args, requeue) -> None:
        self.outcome = run_job(job_id, settings, rank_args=rank_args, requeue=requeue)
        self.ended_at = time.monotonic()

    def join(self, timeout_s: float) -> RunOutcome:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"run_job still running after {timeout_s} s"
        assert self.outcome is not None
        return self.outcome


def ranks_of(settings: Settings, job_id: str, count: int = 2) -> list[group_progress.RankFile]:
    folder = job_dir(settings.artifacts_dir, job_id) / "group"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ranks = group_progress.read_ranks(folder) if folder.exists() else []
        if len(ranks) == count:
            return ranks
        time.sleep(0.1)
    raise TimeoutError(f"the {count} ranks of {job_id} never registered")


def job_row(sessions, job_id: str):
    with session_scope(sessions) as session:
        job = get_job(session, job_id)
        session.expunge(job)
        return job


def wait_for_step(sessions, job_id: str, step: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while job_row(sessions, job_id).step < step:
        assert time.monotonic() < deadline, f"{job_id} never reached step {step}"
        time.sleep(0.05)


def status_events(sessions, job_id: str) -> list[dict]:
    with session_scope(sessions) as session:
        rows = list_events(session, job_id, after_id=0, limit=1000)
        return [r.data for r in rows if r.type == "status"]


def assert_all_gone(ranks: list[group_progress.RankFile]) -> None:
    alive = [r for r in ranks if pid_running(r.pid) or pid_running(r.agent_pid)]
    assert not alive, f"processes of the group still run: {alive}"


# ---------------------------------------------------------------------- two machines


def test_two_agents_standing_for_two_machines_join_one_rendezvous(tmp_path):
    port = group.free_port("127.0.0.1")
    agents = []
    for machine in ("a", "b"):
        folder = tmp_path / machine
        folder.mkdir()
        cmd = [
            sys.executable,
            "-m",
            group.AGENT_MODULE,
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--run-id",
            "job_two_machines",
            "--local-addr",
            "127.0.0.1",
            "--join-timeout-s",
            "60",
            "--result-file",
            str(folder / "agent.json"),
            *(["--is-host"] if machine == "a" else []),
            "--",
            group.RANK_MODULE,
            *probe_args(steps=3),
        ]
        env = {**os.environ, group_progress.GROUP_DIR_ENV: str(folder)}
        env["KEEL_HOME"] = str(tmp_path / "home")
        log = (folder / "agent.log").open("wb")
        agents.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [agent.wait(180) for agent in agents]
    logs = [(tmp_path / m / "agent.log").read_text() for m in ("a", "b")]
    assert codes == [0, 0], logs
    results = [json.loads((tmp_path / m / "agent.json").read_text()) for m in ("a", "b")]
    assert results == [{"ok": True}, {"ok": True}]
    # One rank on each machine, each started by that machine's agent; both ran every step.
    ranks = [group_progress.read_ranks(tmp_path / m) for m in ("a", "b")]
    assert [len(r) for r in ranks] == [1, 1]
    assert {r[0].rank for r in ranks} == {0, 1}
    assert [r[0].agent_pid for r in ranks] == [a.pid for a in agents]
    outcomes = [group_progress.read_outcome(tmp_path / m) for m in ("a", "b")]
    assert outcomes == [{"status": "succeeded", "step": 3, "reason": None}] * 2


# ---------------------------------------------------------------------- one job's group


def test_a_probe_job_of_two_ranks_succeeds_with_rank_0_recording_its_steps(sdk, settings, sessions):
    job_id = probe_job(sdk, steps=3)
    outcome = run_job(job_id, settings, rank_args=probe_args(steps=3))
    assert (outcome.status, outcome.step) == ("succeeded", 3)
    job = job_row(sessions, job_id)
    assert (job.status, job.step, job.lease_owner) == ("succeeded", 3, None)
    assert_all_gone(ranks_of(settings, job_id))


def test_sigkill_of_one_rank_fails_the_job_within_the_bound_naming_the_rank(
    sdk, settings, sessions
):
    job_id = probe_job(sdk, steps=1000)
    delivery = Delivery(job_id, settings, probe_args(steps=1000, step_s=0.2))
    wait_for_step(sessions, job_id, 2)
    ranks = ranks_of(settings, job_id)
    victim = next(r for r in ranks if r.rank == 1)
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    outcome = delivery.join(DEATH_BOUND_S + 30)
    assert delivery.ended_at - killed_at < DEATH_BOUND_S
    assert outcome.status == "failed"
    job = job_row(sessions, job_id)
    assert job.status == "failed"
    assert f"rank 1 (pid {victim.pid}) was killed by SIGKILL" in job.error
    assert status_events(sessions, job_id)[-1] == {"status": "failed", "error": job.error}
    assert_all_gone(ranks)


@pytest.mark.parametrize("where", ["at a step boundary", "inside a long step"])
def test_cancel_stops_every_rank(sdk, settings, sessions, where):
    job_id = probe_job(sdk, steps=1000)
    step_s = 0.1 if where == "at a step boundary" else 600.0
    if where == "at a step boundary":  # the ranks stop on their own, however loaded the machine
        settings = settings.model_copy(update={"group_stop_grace_s": 60.0})
    delivery = Delivery(job_id, settings, probe_args(steps=1000, step_s=step_s))
    wait_for_step(sessions, job_id, 1)
    ranks = ranks_of(settings, job_id)
    with session_scope(sessions) as session:
        assert set_requested(session, job_id, "cancel", from_statuses=("running",))
    asked_at = time.monotonic()
    outcome = delivery.join(DEATH_BOUND_S + 30)
    assert outcome.status == "cancelled"
    assert job_row(sessions, job_id).status == "cancelled"
    last = status_events(sessions, job_id)[-1]
    if where == "inside a long step":
        # The ranks never reach a boundary: the worker ends them after the grace.
        assert GRACE_S < delivery.ended_at - asked_at < DEATH_BOUND_S
        assert last["reason"].startswith(f"the ranks did not stop within {GRACE_S:g} s")
    else:
        assert last == {"status": "cancelled"}  # no reason: nobody had to end the ranks
    assert_all_gone(ranks)


def test_a_rank_that_makes_no_progress_fails_the_job_within_the_stall_bound(
    sdk, settings, sessions
):
    job_id = probe_job(sdk, steps=1000)
    delivery = Delivery(job_id, settings, probe_args(steps=1000, step_s=0.1, stall_rank=1))
    wait_for_step(sessions, job_id, 1)
    stalled_from = time.monotonic()
    ranks = ranks_of(settings, job_id)
    outcome = delivery.join(STALL_S + DEATH_BOUND_S + 30)
    assert outcome.status == "failed"
    assert delivery.ended_at - stalled_from < STALL_S + group.TERMINATE_WAIT_S + 2.0
    job = job_row(sessions, job_id)
    assert job.step == 1
    assert job.error.startswith("no progress from the job's ranks for")
    assert f"the bound is {STALL_S:g} s" in job.error
    assert_all_gone(ranks)


def test_a_killed_rank_requeues_the_job_while_it_has_requeues_left(sdk, settings, sessions):
    settings = settings.model_copy(update={"group_requeues": 1})
    job_id = probe_job(sdk, steps=1000)
    requeued: list[str] = []

    def kill_rank_1_of_attempt(attempt: int) -> RunOutcome:
        delivery = Delivery(job_id, settings, probe_args(steps=1000, step_s=0.2), requeued)
        deadline = time.monotonic() + 120
        while job_row(sessions, job_id).attempts < attempt or not all(
            pid_running(r.pid) for r in ranks_of(settings, job_id)
        ):  # this attempt's ranks, not the files of the one before
            assert time.monotonic() < deadline, f"attempt {attempt} never started its ranks"
            time.sleep(0.1)
        ranks = ranks_of(settings, job_id)
        os.kill(next(r for r in ranks if r.rank == 1).pid, signal.SIGKILL)
        outcome = delivery.join(DEATH_BOUND_S + 30)
        assert_all_gone(ranks)
        return outcome

    assert kill_rank_1_of_attempt(1).status == "requeued"
    job = job_row(sessions, job_id)
    assert (job.status, job.lease_owner, job.error, requeued) == ("queued", None, None, [job_id])
    reason = status_events(sessions, job_id)[-1]["reason"]
    assert reason.startswith("re-queued (0 re-queue(s) left) after: rank 1 (pid")
    assert "killed by SIGKILL" in reason
    # The second attempt has none left: the same failure fails the job.
    assert kill_rank_1_of_attempt(2).status == "failed"
    job = job_row(sessions, job_id)
    assert (job.status, job.attempts, requeued) == ("failed", 2, [job_id])
    assert "rank 1" in job.error and "SIGKILL" in job.error


def test_a_worker_asked_for_more_ranks_than_it_advertises_fails_the_job(sdk, settings, sessions):
    job_id = probe_job(sdk, steps=2)
    outcome = run_job(job_id, settings.model_copy(update={"worker_max_processes": 1}))
    assert outcome.status == "failed"
    job = job_row(sessions, job_id)
    assert job.error == (
        "distributed.processes asks for 2 trainer processes per machine; the live workers run "
        "at most 1 per job (KEEL_WORKER_MAX_PROCESSES)"
    )
    assert not (job_dir(settings.artifacts_dir, job_id) / "group").exists()


def test_a_job_of_two_machines_runs_with_a_joining_worker(sdk, settings, sessions):
    """The lease holder hosts the rendezvous and calls for one more machine; a second worker
    (here a thread of this process, standing for another host) joins through `join_job`."""
    from keel_worker.jobrunner.joining import join_job

    job_id = probe_job(sdk, steps=3, processes=1, nodes=2)
    joins: list[threading.Thread] = []
    joined: list[str] = []
    rank_args = probe_args(steps=3)

    def call_machines(count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(
                target=lambda: joined.append(join_job(job_id, settings, rank_args=rank_args))
            )
            thread.start()
            joins.append(thread)

    outcome = run_job(job_id, settings, rank_args=rank_args, call_machines=call_machines)
    for thread in joins:
        thread.join(60)
    assert (outcome.status, outcome.step) == ("succeeded", 3)
    assert joined == ["succeeded"]
    job = job_row(sessions, job_id)
    assert job.status == "succeeded" and job.rendezvous.startswith("127.0.0.1:")
    folders = sorted(job_dir(settings.artifacts_dir, job_id).glob("group*"))
    ranks = [r for folder in folders for r in group_progress.read_ranks(folder)]
    assert sorted(r.rank for r in ranks) == [0, 1] and len({r.agent_pid for r in ranks}) == 2


# ---------------------------------------------------------------------- a training job


@pytest.mark.slow
def test_a_training_job_of_two_ranks_ends_with_the_weights_of_one_process(sdk, settings, sessions):
    """The real job loop on 2 gloo ranks (rank 0 leads, rank 1 follows its directives): every
    step once in the metrics, the held-out eval on the group's engine, a checkpoint per step, and
    the metrics and final weights those of the same job trained in one process."""
    # A bound on the slowest phase (loading the model, a step), not on a probe's step.
    settings = settings.model_copy(update={"group_stall_timeout_s": 300.0})
    config = tiny_job_config(
        steps=2, optimizer={"lr": 1e-3}, checkpoint_every=1, eval_every=1, eval_size=4
    )
    single = sdk.jobs.create(config).id
    assert run_job(single, settings).status == "succeeded"
    grouped = sdk.jobs.create({**config, "distributed": {"processes": 2}}).id
    outcome = run_job(grouped, settings)
    assert (outcome.status, outcome.step) == ("succeeded", 2), job_row(sessions, grouped).error
    job = job_row(sessions, grouped)
    assert (job.status, job.step, job.policy_version) == ("succeeded", 2, 2)
    steps = sorted({m.step for m in sdk.metrics.list(grouped, name="optim/loss")})
    assert steps == [1, 2]
    assert sorted(c.step for c in sdk.checkpoints.list(grouped).data) == [1, 2]
    for name in ("eval/accuracy", "optim/loss", "reward/mean"):
        ones, twos = (
            [(m.step, m.value) for m in sdk.metrics.list(job, name=name)]
            for job in (single, grouped)
        )
        assert ones and len(ones) == len(twos), name
        pairs = zip(ones, twos, strict=True)
        assert all(a[0] == b[0] and abs(a[1] - b[1]) <= 1e-5 for a, b in pairs), name

    assert_same_weights(final_weights(settings, sdk, single), final_weights(settings, sdk, grouped))


@pytest.mark.slow
def test_a_rank_killed_mid_job_requeues_it_and_the_resumed_job_ends_as_if_never_killed(
    sdk, settings, sessions
):
    """SIGKILL of rank 1 after the first step: the job goes back to the queue, the next delivery
    resumes it on 2 ranks from its latest (sharded) checkpoint, and its final weights are those
    of the same job never interrupted (in one process)."""
    settings = settings.model_copy(update={"group_stall_timeout_s": 300.0, "group_requeues": 1})
    config = tiny_job_config(steps=3, optimizer={"lr": 1e-3}, checkpoint_every=1)
    single = sdk.jobs.create(config).id
    assert run_job(single, settings).status == "succeeded"
    grouped = sdk.jobs.create({**config, "distributed": {"processes": 2}}).id
    requeued: list[str] = []
    delivery = Delivery(grouped, settings, (), requeued)
    wait_for_step(sessions, grouped, 1, timeout_s=300)
    ranks = ranks_of(settings, grouped)
    os.kill(next(r for r in ranks if r.rank == 1).pid, signal.SIGKILL)
    assert delivery.join(DEATH_BOUND_S + 60).status == "requeued"
    killed_at = job_row(sessions, grouped).step
    assert killed_at < 3 and requeued == [grouped]
    outcome = run_job(grouped, settings)
    assert (outcome.status, outcome.step) == ("succeeded", 3), job_row(sessions, grouped).error
    job = job_row(sessions, grouped)
    assert (job.attempts, job.policy_version) == (2, 3)
    steps = sorted({m.step for m in sdk.metrics.list(grouped, name="optim/loss")})
    assert steps == [1, 2, 3]
    assert_same_weights(final_weights(settings, sdk, single), final_weights(settings, sdk, grouped))


def final_weights(settings: Settings, sdk, job_id: str) -> dict:
    """The consolidated weights of the job's newest checkpoint."""
    from safetensors.torch import load_file

    from keel_worker.training.checkpoint import checkpoint_dir

    newest = max(sdk.checkpoints.list(job_id).data, key=lambda c: c.step)
    folder = checkpoint_dir(job_dir(settings.artifacts_dir, job_id), newest.step)
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return {k: v for f in files for k, v in load_file(f).items()}


def assert_same_weights(one: dict, two: dict) -> None:
    assert one.keys() == two.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst <= 1e-6, worst


@pytest.mark.slow
def test_pause_of_a_two_rank_job_checkpoints_every_rank_and_the_resumed_job_ends_as_one(
    sdk, settings, sessions
):
    """Pause reaches every rank at a step boundary (rank 0 decides, the others follow its
    checkpoint and end directives); resumed, the job ends with the single-process weights."""
    settings = settings.model_copy(update={"group_stall_timeout_s": 300.0})
    config = tiny_job_config(steps=3, optimizer={"lr": 1e-3})
    single = sdk.jobs.create(config).id
    assert run_job(single, settings).status == "succeeded"
    grouped = sdk.jobs.create({**config, "distributed": {"processes": 2}}).id
    delivery = Delivery(grouped, settings, ())
    wait_for_step(sessions, grouped, 1, timeout_s=300)
    ranks = ranks_of(settings, grouped)
    sdk.jobs.pause(grouped)
    outcome = delivery.join(120)
    assert outcome.status == "paused", job_row(sessions, grouped).error
    assert_all_gone(ranks)
    paused_at = job_row(sessions, grouped).step
    assert paused_at < 3
    assert [c.step for c in sdk.checkpoints.list(grouped).data] == [paused_at]
    sdk.jobs.resume(grouped)
    assert run_job(grouped, settings).status == "succeeded"
    assert_same_weights(final_weights(settings, sdk, single), final_weights(settings, sdk, grouped))


def test_a_rank_rebuilds_the_workers_settings_from_the_environment(settings, monkeypatch):
    """The ranks get the worker's `Settings` as `KEEL_*` variables (not the worker's own
    environment, which tests and `keel up` override with explicit settings)."""
    tuned = settings.model_copy(
        update={"model_roots": (settings.home / "a", settings.home / "b"), "metrics_token": None}
    )
    monkeypatch.setenv("KEEL_METRICS_TOKEN", "from-the-parent-environment")
    from keel.types.training import DistributedConfig

    env = group.RankGroup("job_x", DistributedConfig(), tuned, None).environment()
    for key in [k for k in os.environ if k.startswith("KEEL_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("KEEL_"):
            monkeypatch.setenv(key, value)
    assert Settings() == tuned
