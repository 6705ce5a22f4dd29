"""`config.logging` of a job: TensorBoard event files and an offline W&B run under the job's
artifacts, holding every metric the API serves, step by step, under the same names; a job that
asks for neither writes neither."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from job_configs import tiny_job_config
from tracker_files import tensorboard_scalars, wandb_history

import keel
from keel.types.metrics import is_documented
from keel_worker.jobrunner.runner import run_job

CONFIG = tiny_job_config(optimizer={"lr": 1e-3})


def _served(sdk: keel.Client, job_id: str) -> dict[str, dict[int, float]]:
    served: dict[str, dict[int, float]] = {}
    for point in sdk.metrics.list(job_id):
        served.setdefault(point.name, {})[point.step] = point.value
    return served


@pytest.mark.slow
def test_tensorboard_and_wandb_hold_what_the_api_serves(sdk, settings, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logging = {"tensorboard": True, "wandb": {"project": "keel-test", "mode": "offline"}}
    job = sdk.jobs.create({**CONFIG, "logging": logging})
    assert run_job(job.id, settings).status == "succeeded"
    served = _served(sdk, job.id)
    assert {"reward/mean", "mismatch/kl_k3", "clip/frac", "time/step_s"} <= set(served)
    # The job loop's own names too, and nothing outside the vocabulary (keel.types.metric_names).
    assert {"rewards/rewarded", "rewards/expired"} <= set(served)
    assert [name for name in served if not is_documented(name)] == []
    workdir = Path(settings.artifacts_dir) / "jobs" / job.id

    scalars = tensorboard_scalars(workdir / "tensorboard")
    assert set(scalars) == set(served)
    for name, by_step in served.items():
        assert set(scalars[name]) == {1, 2}, name
        for step, value in by_step.items():
            # Event files store float32; a non-finite metric (served as null) stays NaN there.
            if value is None:
                assert math.isnan(scalars[name][step]), name
            else:
                assert scalars[name][step] == pytest.approx(value, rel=1e-6, abs=1e-30), name

    (run_file,) = (workdir / "wandb").glob(f"offline-run-*-{job.id}/run-{job.id}.wandb")
    run_id, rows = wandb_history(run_file)
    assert run_id == job.id
    assert [row["_step"] for row in rows] == [1, 2]
    for row in rows:
        for name, value in served.items():
            logged = row[name]
            if value[row["_step"]] is None:
                assert logged == "NaN" or math.isnan(logged), name
            else:
                assert logged == pytest.approx(value[row["_step"]], rel=1e-12), name


@pytest.mark.slow
def test_a_job_without_logging_writes_no_tracker_files(sdk, settings):
    job = sdk.jobs.create({**CONFIG, "steps": 1})
    assert run_job(job.id, settings).status == "succeeded"
    assert job.config["logging"] == {"tensorboard": False, "wandb": None}  # the defaults
    workdir = Path(settings.artifacts_dir) / "jobs" / job.id
    assert any(workdir.rglob("*.safetensors"))  # the job did write its artifacts here
    assert not (workdir / "tensorboard").exists() and not (workdir / "wandb").exists()
