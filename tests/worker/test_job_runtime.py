"""A job's compute choices are served by the API: set by the worker at its start, from the
device profiles it measured (`keel_worker.engines.hardware`), naming the CPU and its GEMM rates."""

from __future__ import annotations

import pytest
from job_configs import tiny_job_config

from keel_worker.engines.hardware import cpu_model_name, device_profile
from keel_worker.jobrunner.runner import run_job


@pytest.mark.slow
def test_the_worker_reports_its_compute_choice_and_gemm_rates(sdk, settings):
    client = sdk
    config = tiny_job_config(
        model={"name": "tiny-dense"}, rollout={"precision": "bf16"}, train_dtype="bf16", steps=1
    )
    job = client.jobs.create(config, reward={"type": "builtin", "verifier": "task"})
    assert client.jobs.retrieve(job.id).runtime is None  # no worker has started it yet
    assert run_job(job.id, settings).status == "succeeded"

    runtime = client.jobs.retrieve(job.id).runtime
    cpu = device_profile("cpu")  # the same process ran the job: the cached profile
    expected = "bf16" if cpu.bf16_native else "fp32"
    assert (runtime.rollout.device, runtime.rollout.requested) == ("cpu", "bf16")
    assert runtime.rollout.compute_dtype == expected
    assert (runtime.training.requested, runtime.training.compute_dtype) == ("bf16", expected)
    [served] = [d for d in runtime.devices if d.device == "cpu"]
    assert served.name == cpu_model_name() and served.gemm_gflops == cpu.gemm_gflops
    assert served.gemm_gflops["fp32"] > 0 and served.gemm_gflops["bf16"] > 0
    assert served.bf16_native == cpu.bf16_native
