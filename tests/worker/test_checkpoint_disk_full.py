"""A disk that fills up while a job writes a checkpoint: the job pauses (it does not fail for
good) with a reason that says "No space left on device" and where, no half-written checkpoint is
left, and once there is room again the resumed job continues from its last complete checkpoint
and runs every step once.

Two ways to fill the disk: a real one, a small tmpfs mounted as the artifacts folder (needs the
right to mount: root in this project's container; skipped elsewhere), on which torch fails with
its own opaque error; and, everywhere, `ENOSPC` raised by the write of the trainer state (the
file-write layer of the checkpoint), the error a plain `write()` gives.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
import torch
from in_process import admin_sdk, job_settings
from job_configs import merge_config, tiny_job_config

from keel_server.platform.storage import job_dir
from keel_worker.jobrunner.runner import run_job

pytestmark = pytest.mark.slow

STEPS = 3


def _config(**overrides) -> dict:
    return merge_config(tiny_job_config(checkpoint_every=1, steps=STEPS), overrides)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _mount_tmpfs(path: Path, size_bytes: int, *, remount: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    options = f"{'remount,' if remount else ''}size={size_bytes}"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def _paused_for_space(sdk, job_id: str) -> str:
    job = sdk.jobs.retrieve(job_id)
    assert job.status == "paused", (job.status, job.error)
    last = [e for e in sdk.jobs.events(job_id, follow=False) if e.type == "status"][-1]
    assert last.data["status"] == "paused"
    return last.data["reason"]


def _resume_and_finish(sdk, settings, job_id: str, complete: int) -> None:
    assert sdk.jobs.resume(job_id).status == "queued"
    outcome = run_job(job_id, settings)
    assert (outcome.status, outcome.step) == ("succeeded", STEPS)
    done = sdk.jobs.retrieve(job_id)
    assert (done.status, done.step, done.attempts) == ("succeeded", STEPS, 2)
    steps = [m.step for m in sdk.metrics.list(job_id, name="optim/loss")]
    assert steps == list(range(1, STEPS + 1))  # the steps after `complete` ran again, once
    assert [c.step for c in sdk.checkpoints.list(job_id).data] == list(range(1, STEPS + 1))
    assert complete < STEPS


def test_a_full_tmpfs_pauses_the_job_and_the_resume_continues(sqlite_url, tmp_path):
    # One checkpoint's size, measured on a 1-step job of the same model on the ordinary disk.
    probe_settings = job_settings(sqlite_url, tmp_path / "probe")
    with admin_sdk(probe_settings) as sdk:
        probe = sdk.jobs.create(_config(steps=1))
        assert run_job(probe.id, probe_settings).status == "succeeded"
    one = _folder_bytes(job_dir(probe_settings.artifacts_dir, probe.id) / "checkpoints")

    artifacts = tmp_path / "artifacts"
    if not _mount_tmpfs(artifacts, int(2.5 * one)):  # room for two checkpoints, not three
        pytest.skip("cannot mount a tmpfs here (needs root); the ENOSPC test still runs")
    try:
        settings = job_settings(sqlite_url, tmp_path, artifacts_dir=artifacts)
        with admin_sdk(settings) as sdk:
            job = sdk.jobs.create(_config())
            assert run_job(job.id, settings).status == "paused"
            reason = _paused_for_space(sdk, job.id)
            assert reason.startswith("No space left on device")
            assert f"jobs/{job.id}/checkpoints/step_000003 in the artifacts folder" in reason
            checkpoints = job_dir(artifacts, job.id) / "checkpoints"
            assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000001", "step_000002"]
            assert [c.step for c in sdk.checkpoints.list(job.id).data] == [1, 2]

            assert _mount_tmpfs(artifacts, 8 * one, remount=True)  # the operator made room
            _resume_and_finish(sdk, settings, job.id, complete=2)
    finally:
        subprocess.run(["umount", "-l", str(artifacts)], capture_output=True)


def test_enospc_while_writing_the_trainer_state_pauses_the_job(sqlite_url, tmp_path, monkeypatch):
    settings = job_settings(sqlite_url, tmp_path)
    real_save = torch.save
    writes = {"trainer states": 0}

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        if str(f).endswith("trainer_state.pt"):
            writes["trainer states"] += 1
            if writes["trainer states"] == 2:  # the checkpoint of step 2
                with open(f, "wb") as half:  # as far as it got
                    half.write(b"\0" * 1024)
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with admin_sdk(settings) as sdk:
        job = sdk.jobs.create(_config())
        assert run_job(job.id, settings).status == "paused"
        reason = _paused_for_space(sdk, job.id)
        assert reason.startswith("No space left on device")
        assert f"jobs/{job.id}/checkpoints/step_000002" in reason
        checkpoints = job_dir(settings.artifacts_dir, job.id) / "checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000001"]
        _resume_and_finish(sdk, settings, job.id, complete=1)
